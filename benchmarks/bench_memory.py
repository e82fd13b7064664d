"""Training-step memory and time with and without activation checkpointing (``grad_checkpoint``); prints JSON.

One training step = forward + backward + AdamW step (the training's fused AdamW, ``build_optimizer``)
of a pretraining model on one 2-view study of random images, fp32, on the CPU. The xs and s presets
keep their patch size 32 at every image size (1,024 patches per view at 1024²); b keeps 16 (4,096).

Every configuration (preset × image size × scheme × checkpointing off / on) is measured in fresh
subprocesses, so every RSS figure is that configuration's alone. In each, in order: build the model,
the optimizer and the batch, and create the optimizer state directly (as AdamW's first step would,
without gradients: :func:`create_adam_state`); read VmRSS (``rss_setup_mib``: interpreter, libraries,
weights, optimizer state, batch); reset the peak counter VmHWM to it (``/proc/self/clear_refs`` 5); run
the first training step; read VmHWM.

Activation peak (``activation_peak_mib``): what one training step needs on top of weights and optimizer
state (saved activations, gradients, temporaries of forward, backward and optimizer step) = VmHWM after
the first step − VmRSS just before it, in a process where glibc malloc gives every allocation of 128 KiB
or more its own mapping and returns it when freed (``mallopt`` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD
128 KiB, fixed): there RSS follows the live tensors, so its peak is the step's live peak.
``peak_per_image_mib`` divides it by the 2 images.

Under CPU training's own malloc setting (``train.distributed.keep_freed_memory``: no mmap, freed memory
kept and reused, never returned) RSS does not follow live memory: a kept heap cannot always reuse its
holes, and how much it grows depends on the order of allocations, so the same step shows a larger peak
(``training_malloc``: the first step's, and the peak after all steps). That process also times the
steps: after the first (warm-up) step, ``--repeats`` steps (only 1 when the first took longer than
``--slow`` seconds, at least 5 when it took under a second; ``timed_steps`` says how many; 0: the first
step's time); ``step_s`` is the fastest one's wall time, ``step_cpu_s`` its CPU time (all threads),
steadier than wall time on a shared machine (``load_average_1min`` is recorded).

Why not the change of RSS over a step after a warm-up step: under training's setting it is about
nothing (the warm-up's freed memory is kept and reused); nor the peak of a whole process: it hides the
step behind setup. Hence fresh processes, the counter reset, and the live-memory process. (Measured:
with checkpointing the kept heap fragments badly, b at 1024² peaking at 1.6-2.8 GB, varying run to run,
over a live peak of 0.7 GB.)

    python benchmarks/bench_memory.py [--threads 2] [--cases "b@1024,b@1024:diffusion"] [--modes off,on]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time

CASES = [f"{preset}@{size}" for preset in ("xs", "s", "b") for size in (256, 512, 1024)]
VIEWS = 2  # one 2-view study
LR, WEIGHT_DECAY = 1.5e-4, 0.05
QUICK_REPEATS = 5  # timed steps at least, when the first step took under a second
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
LIVE_MMAP_THRESHOLD = 128 * 1024
MALLOC = ("live", "training", "default")  # how a child process sets glibc malloc
ACCEPTANCE = {"case": "b@1024", "activation_peak_ratio_at_most": 0.40, "step_time_ratio_at_most": 1.35}


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_kib() -> int:
    return max(proc_status_kib("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


def set_malloc(kind: str) -> bool:
    """``live``: every allocation ≥ 128 KiB mapped on its own and returned when freed; ``training``: as CPU
    training sets it; ``default``: glibc's own. Returns whether a setting applied."""
    if kind == "training":
        from raddiffusion.train.distributed import keep_freed_memory

        return keep_freed_memory()
    if kind == "live":
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            return False
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LIVE_MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, LIVE_MMAP_THRESHOLD))
    return False


def parse_case(name: str) -> tuple[str, int, str]:
    """``PRESET@SIZE`` or ``PRESET@SIZE:SCHEME`` -> (preset, image size, scheme)."""
    head, _, scheme = name.strip().partition(":")
    preset, _, size = head.partition("@")
    return preset, int(size), scheme or "vanilla"


def create_adam_state(optimizer) -> None:
    """AdamW's state as its first step creates it, without gradients: a step on zero gradients would leave
    their freed memory in a kept heap, where the measured step's gradients and activations would go unseen."""
    import torch

    for group in optimizer.param_groups:
        for parameter in group["params"]:
            optimizer.state[parameter] = {
                "step": torch.zeros((), dtype=torch.float32, device=parameter.device),
                "exp_avg": torch.zeros_like(parameter, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(parameter, memory_format=torch.preserve_format),
            }


def measure(preset: str, size: int, scheme: str, checkpoint: bool, malloc: str, repeats: int, slow: float,
            threads: int) -> dict:
    """One configuration, in this (fresh) process."""
    malloc_set = set_malloc(malloc)
    import torch

    from raddiffusion.models import create
    from raddiffusion.train.optim import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create(preset, scheme, image_size=size, grad_checkpoint=checkpoint).train()
    optimizer = build_optimizer(model, LR, WEIGHT_DECAY)
    images = torch.rand(VIEWS, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lengths = torch.tensor([VIEWS])
    create_adam_state(optimizer)
    gc.collect()
    rss_setup = proc_status_kib("VmRSS")
    hwm_reset = reset_peak_rss()

    def train_step() -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        model.loss(images, lengths).backward()
        optimizer.step()
        return time.perf_counter() - started, time.process_time() - cpu

    def step_peak() -> int:  # ru_maxrss is not reset with VmHWM
        return proc_status_kib("VmHWM") if hwm_reset else peak_rss_kib()

    first = train_step()
    first_peak = step_peak()
    count = repeats
    if first[0] > slow:
        count = min(1, repeats)
    elif first[0] < 1.0 and repeats:
        count = max(repeats, QUICK_REPEATS)
    timed = [train_step() for _ in range(count)]
    peak = step_peak()
    fastest = min(timed or [first])
    config = model.config
    return {
        "preset": preset, "image_size": size, "scheme": scheme, "grad_checkpoint": checkpoint,
        "patch_size": config.patch_size, "patches_per_view": (size // config.patch_size) ** 2,
        "mask_ratio": config.mask_ratio, "params_million": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "malloc": malloc, "malloc_set": malloc_set, "hwm_reset": hwm_reset, "rss_setup_mib": mib(rss_setup),
        "activation_peak_mib": mib(first_peak - rss_setup), "activation_peak_after_steps_mib": mib(peak - rss_setup),
        "peak_rss_mib": mib(peak), "rss_after_steps_mib": mib(proc_status_kib("VmRSS")),
        "first_step_s": round(first[0], 2), "timed_steps": len(timed),
        "step_s": round(fastest[0], 2), "step_cpu_s": round(fastest[1], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine slows the steps
    }


def run_child(preset: str, size: int, scheme: str, checkpoint: bool, malloc: str, repeats: int,
              args: argparse.Namespace) -> dict:
    spec = [preset, size, scheme, checkpoint, malloc, repeats, args.slow, args.threads]
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if done.returncode != 0:  # e.g. killed for memory: say so and go on with the others
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return {"error": f"exit status {done.returncode}: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_configuration(case: str, checkpoint: bool, args: argparse.Namespace) -> dict:
    """The live-memory process (one step) and the timed process under training's (or glibc's) malloc."""
    preset, size, scheme = parse_case(case)
    started = time.perf_counter()
    live = run_child(preset, size, scheme, checkpoint, "live", 0, args)
    timed = run_child(preset, size, scheme, checkpoint, "default" if args.default_malloc else "training",
                      args.repeats, args)
    if "error" in live or "error" in timed:
        return {"preset": preset, "image_size": size, "scheme": scheme, "grad_checkpoint": checkpoint,
                "error": live.get("error") or timed.get("error")}
    result = {key: timed[key] for key in ("preset", "image_size", "scheme", "grad_checkpoint", "patch_size",
                                          "patches_per_view", "mask_ratio", "params_million")}
    result.update({
        "rss_setup_mib": live["rss_setup_mib"],
        "activation_peak_mib": live["activation_peak_mib"],
        "peak_per_image_mib": round(live["activation_peak_mib"] / VIEWS, 1),
        "training_malloc": {key: timed[key] for key in (
            "malloc", "malloc_set", "rss_setup_mib", "activation_peak_mib", "activation_peak_after_steps_mib",
            "peak_rss_mib", "rss_after_steps_mib")},
        **{key: timed[key] for key in ("first_step_s", "timed_steps", "step_s", "step_cpu_s", "load_average_1min")},
        "hwm_reset": live["hwm_reset"] and timed["hwm_reset"],
        "process_s": round(time.perf_counter() - started, 1),
    })
    print(f"{case} checkpoint={'on' if checkpoint else 'off'}: activation peak {result['activation_peak_mib']} MiB "
          f"(training malloc: {timed['activation_peak_mib']}, {timed['activation_peak_after_steps_mib']} after all "
          f"steps), step {result['step_s']} s ({result['step_cpu_s']} s CPU)", file=sys.stderr, flush=True)
    return result


def comparison(off: dict, on: dict) -> dict:
    """Checkpointing on relative to off, for one case."""
    if "error" in off or "error" in on:
        return {}

    def ratio(get) -> float:
        return round(get(on) / get(off), 3)

    return {
        "activation_peak_ratio": ratio(lambda r: r["activation_peak_mib"]),
        "training_malloc_activation_peak_ratio": ratio(lambda r: r["training_malloc"]["activation_peak_mib"]),
        "training_malloc_after_steps_ratio": ratio(lambda r: r["training_malloc"]["activation_peak_after_steps_mib"]),
        "training_malloc_peak_rss_ratio": ratio(lambda r: r["training_malloc"]["peak_rss_mib"]),
        "step_time_ratio": ratio(lambda r: r["step_s"]),
        "step_cpu_time_ratio": ratio(lambda r: r["step_cpu_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES),
                        help="comma-separated PRESET@SIZE[:SCHEME] (scheme vanilla or diffusion; default: "
                        "xs, s, b at 256, 512, 1024, vanilla)")
    parser.add_argument("--modes", default="off,on", help="checkpointing modes to run: off, on or both (default)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed steps after the first; the fastest counts (0: report the first step)")
    parser.add_argument("--slow", type=float, default=120.0,
                        help="time only 1 more step when the first step took longer than this (seconds)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="time under glibc's own malloc settings instead of CPU training's")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe_machine

    modes = [mode.strip() == "on" for mode in args.modes.split(",")]
    cases, compared = {}, {}
    for case in (c.strip() for c in args.cases.split(",")):
        results = {checkpoint: run_configuration(case, checkpoint, args) for checkpoint in modes}
        cases[case] = {("on" if k else "off"): v for k, v in results.items()}
        if len(results) == 2:
            compared[case] = comparison(results[False], results[True])
    acceptance = compared.get(ACCEPTANCE["case"])
    if acceptance:
        memory_ok = acceptance["activation_peak_ratio"] <= ACCEPTANCE["activation_peak_ratio_at_most"]
        time_ok = acceptance["step_cpu_time_ratio"] <= ACCEPTANCE["step_time_ratio_at_most"]
        training_ok = acceptance["training_malloc_activation_peak_ratio"] <= ACCEPTANCE["activation_peak_ratio_at_most"]
        acceptance = {**ACCEPTANCE, **acceptance, "passed": memory_ok and time_ok,
                      "passed_on_training_malloc_rss": training_ok and time_ok}
    print(json.dumps({
        **describe_machine(),
        "threads": args.threads,
        "views": VIEWS,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cases": cases,
        "checkpointing_on_vs_off": compared,
        "acceptance": acceptance,
    }, indent=2))


if __name__ == "__main__":
    main()
