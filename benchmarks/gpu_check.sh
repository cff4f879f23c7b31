#!/usr/bin/env bash
# Every CUDA check of aetrain on one GPU, in short steps with a one-line outcome each, then the README's GPU
# command and the throughput table, sized to take under 10 minutes on an H100 or H200 (each step's limit is its
# budget; the steps' times are in the summary). From the project's root:
#
#     bash benchmarks/gpu_check.sh                            # aetrain installed with its [dev] extras
#     source .gpu/setup.sh && bash benchmarks/gpu_check.sh    # the project's lent GPU machines (no network)
#
# Each step runs under its own time limit and a failure does not stop the next; the summary at the end lists
# every step, and any test of tests/test_cuda.py that no step ran. The exit status is the number of steps that
# did not pass (0: all passed). Full logs: $GPU_CHECK_LOGS (default: a new temporary directory). PYTHON picks the
# interpreter (default python3).
set -u
cd "$(dirname "$0")/.." || exit 255
PYTHON=${PYTHON:-python3}
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d -t aetrain-gpu-check.XXXXXX)}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
started=$SECONDS
summary=()
failed=0

# step NAME LIMIT_S COMMAND...: run COMMAND under LIMIT_S seconds, its output into $LOGS/NAME.log; one line out
step() {
    local name=$1 limit=$2
    shift 2
    local log="$LOGS/$name.log" begin=$SECONDS rc outcome detail
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    detail=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' | cut -c1-150)
    case $rc in
        0) outcome=PASS
           if grep -Eq '[0-9]+ skipped' <<<"$detail" && ! grep -Eq '[0-9]+ passed' <<<"$detail"; then
               outcome=SKIP  # no CUDA device: the tests skipped themselves
           fi ;;
        124|137) outcome="TIMEOUT (${limit}s)" ;;
        *) outcome="FAIL (exit $rc)"
           local first
           first=$(grep -m 1 -E '^(FAILED|ERROR) ' "$log" | cut -c1-150)
           [ -n "$first" ] && detail="$first; $detail" ;;
    esac
    [ "$outcome" = PASS ] || failed=$((failed + 1))
    local line
    line=$(printf '%-28s %-16s %4ds  %s' "$name" "$outcome" "$((SECONDS - begin))" "$detail")
    echo "$line"
    summary+=("$line")
}

# tests NAME LIMIT_S -k EXPRESSION: the tests of tests/test_cuda.py that EXPRESSION selects, as one step
tests() {
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" "$PYTHON" -m pytest -v -rfE -p no:cacheprovider tests/test_cuda.py "$@"
}

echo "aetrain GPU check; logs in $LOGS"
step environment 60 "$PYTHON" -c "
import torch, aetrain
assert torch.cuda.is_available(), 'no CUDA device'
print(f'torch {torch.__version__}, {torch.cuda.get_device_name()}, aetrain {aetrain.__version__}')"

tests no-host-syncs 90 -k "never_wait or reads_the_device_once"
tests precisions 90 -k "precisions_train_on_cuda"
tests graphs-vs-eager-families 120 -k "test_graphed_steps_give_the_eager_losses_and_weights and plateau"
tests graphs-vs-eager-schedules 120 -k "test_graphed_steps_give_the_eager_losses_and_weights and not plateau"
tests graphs-vs-eager-optimizers 90 -k "every_optimizer_graphs_like_its_eager_step"
tests eager-steps-beside-graph 120 -k "short_window or without_the_doctor or nchw or image_folder"
tests graphs-off-and-log 90 -k "cannot_be_captured or says_so_once or onecycles_cycled_momentum"
tests failed-capture 90 -k "broken_by_a_host_sync"
tests noise-and-memory 120 -k "fresh_noise or memory_is_at_most or no_memory_behind"
tests checkpoints-and-resume 120 -k "resume_is_exact or checkpoint_resumes_on_the_cpu"
tests resume-with-graphs 150 -k "resume_with_graphs_is_exact"
tests lr-find 90 -k "lr_find_replays"
tests ddp-nccl 120 -k "torchrun"
tests torch-compile 300 -k "compiled_model or own_cuda_graphs"
tests benchmark-smoke 150 -k "benchmark_smoke"

# every test of the file ran in some step: the steps' verbose lines against the collected test ids
step all-tests-ran 60 bash -c '
    "$1" -m pytest -q --collect-only -p no:cacheprovider tests/test_cuda.py 2>/dev/null | grep "::" | sort -u >"$2/collected.txt"
    cat "$2"/*.log | grep -ohE "^tests/test_cuda.py::[^ ]+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)" \
        | cut -d " " -f 1 | sort -u >"$2/ran.txt"
    missing=$(comm -23 "$2/collected.txt" "$2/ran.txt")
    [ -z "$missing" ] || { echo "not run by any step: $(echo $missing)"; exit 1; }
    echo "$(wc -l <"$2/collected.txt") tests, each run by a step"' _ "$PYTHON" "$LOGS"

# The README's GPU command, on the bundled digits (the machine may have no network for CIFAR-10)
step readme-command 120 "$PYTHON" -m aetrain model=conv_ae trainer.device=cuda trainer.precision=16-mixed \
    trainer.max_epochs=20 "hydra.run.dir=$LOGS/readme_run"
if [ -f "$LOGS/readme_run/train.log" ]; then
    echo "  $(grep -m 1 'CUDA graphs o[nf]' "$LOGS/readme_run/train.log" | sed 's/.*CUDA graphs/CUDA graphs/' | cut -c1-220)"
    echo "  last epoch: $(tail -n 1 "$LOGS/readme_run/metrics.csv" | cut -c1-200)"
fi

# The throughput table (README, Performance > GPU); the benchmark prints the device, torch version and date
step throughput 300 "$PYTHON" benchmarks/throughput.py --device cuda --batch 256,4096 --epochs 3 \
    --json "$LOGS/throughput.json"
sed -n '/^aetrain throughput/,/^{/p' "$LOGS/throughput.log" 2>/dev/null | grep -v '^{'

# Fused sweeps (README, Performance > Fused sweeps): 16 jobs with the basic launcher, fused, and the first alone;
# the GPU target is the fused sweep in at most 1.6x the time of one job
step fused-sweep 240 "$PYTHON" benchmarks/sweep.py --device cuda --jobs 16 --workloads dense,mnist --epochs 2 \
    --repeats 1 --one --via api --json "$LOGS/fused_sweep.json"
grep -A 4 '^workload' "$LOGS/fused-sweep.log" 2>/dev/null

echo
echo "summary ($((SECONDS - started)) s; logs in $LOGS):"
printf '  %s\n' "${summary[@]}"
echo "$failed step(s) did not pass"
exit $((failed > 255 ? 255 : failed))
