"""`specscale` command: stage entry points for dvc.yaml, plus plan, status, gc, validate, calibrate, recover and
fit-points.

It sits above the library (specscale.*) and the stage scripts: the stages come from the stage table."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from specscale.tools.calibrate import run_calibration
from specscale.store.recover import ProjectBusy, recover_torn_dvc_files, torn_dvc_files
from specscale.fit.laws import fit_points_cli
from specscale.study.plan import StudyPlan
from specscale.study.spec import SpecError, load_study
from stages.runner import fingerprints, load_plan, plan_study, project_root, run_stage
from stages.table import BY_NAME, STAGES
from stages.validate import check_study, write_record
from specscale.tools.makespan import print_makespans
from specscale.tools.status import H100_BF16_PEAK_TFLOPS, print_plan, print_status, print_why


def _stage(args: argparse.Namespace) -> int:
    plan, store = load_plan(args.params)
    return run_stage(BY_NAME[args.name], plan, store)


def _plan(args: argparse.Namespace) -> int:
    plan, store = load_plan(args.params)
    code = fingerprints()
    print_plan(plan, store, gpu_tflops=args.gpu_tflops, mfu=args.mfu, code=code)
    if args.gpus:
        print_makespans(plan, args.gpus, gpu_tflops=args.gpu_tflops, mfu=args.mfu)
    if args.why:
        print_why(plan, store, code, plan.study.cache.on_code_change)
    return 0


def _status(args: argparse.Namespace) -> int:
    plan, store = load_plan(args.params)
    code, policy = fingerprints(), plan.study.cache.on_code_change
    print_status(plan, store, code, policy)
    for torn in torn_dvc_files(store.project_root):
        print(f"DVC cannot read {torn.path.relative_to(store.project_root)}: {torn.reason}; a `dvc repro` was "
              "killed while DVC rewrote it: run `specscale recover`, then `dvc repro`")
    if args.why:
        print_why(plan, store, code, policy)
    return 0


def _gc(args: argparse.Namespace) -> int:
    plan, store = load_plan(args.params)
    doomed: list[Path] = []
    for stage in StudyPlan.run_stages():
        wanted = plan.keys(stage)
        for base in (store.stage_dir(stage), store.work_stage_dir(stage)):
            if base.is_dir():
                doomed += [p for p in sorted(base.iterdir()) if p.is_dir() and p.name not in wanted]
    if not doomed:
        print("nothing to remove: every run belongs to the current sweep")
        return 0
    for path in doomed:
        print(f"{'removing' if args.yes else 'would remove'} {path.relative_to(store.project_root)}")
    if args.yes:
        for path in doomed:
            shutil.rmtree(path)
    else:
        print(f"{len(doomed)} runs not in the sweep; rerun with --yes to delete them")
    return 0


def _validate(args: argparse.Namespace) -> int:
    root = project_root()
    params = Path(args.params) if args.params else root / "params.yaml"
    study, points = check_study(params, root)
    if args.record:
        write_record(study, params, root, root / args.record)
    print(f"ok: preset {study.preset}, {len(points)} training runs")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    params = Path(args.params) if args.params else project_root() / "params.yaml"
    return run_calibration(load_study(params), params, plan_study, lambda name, plan, store: run_stage(
        BY_NAME[name], plan, store), steps=args.steps, width=args.width, layers=args.layers,
        micro_batch=args.micro_batch, probe_tokens=args.probe_tokens, synthetic=args.synthetic_data,
        gpu_tflops=args.gpu_tflops, plan_mfu=args.mfu)


def _recover(args: argparse.Namespace) -> int:
    root = project_root()
    if not (root / ".dvc").is_dir():
        print(f"specscale recover: {root} is not a DVC project (no .dvc/): run it where you run `dvc repro`",
              file=sys.stderr)
        return 2
    try:
        moved = recover_torn_dvc_files(root)
    except ProjectBusy as err:
        print(f"specscale recover: {err}", file=sys.stderr)
        return 1
    for torn, target in moved:
        print(f"set aside {torn.path.relative_to(root)} → {target.relative_to(root)}: {torn.reason}")
    if any(torn.path.name == "dvc.lock" for torn, _ in moved):
        print("without dvc.lock every stage command runs again at the next `dvc repro`; each reuses its finished runs")
    print("run `dvc repro` to go on" if moved else "nothing to recover: DVC can read .dvc/tmp/rwlock and dvc.lock")
    return 0


def _fit_points(args: argparse.Namespace) -> int:
    return fit_points_cli(args.file, args.out)


WHY_HELP = ("for each run to compute, the nearest finished run of its stage and the spec fields that differ (or the "
            "code files that changed, or 'never computed')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specscale", description=__doc__)
    parser.add_argument("--params", default=None, help="params file (default: ./params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    p.add_argument("name", choices=[s.name for s in STAGES])
    p.set_defaults(func=_stage)
    p = sub.add_parser("plan", help="list every run with FLOPs, GPU-hours and bytes to store")
    p.add_argument("--gpu-tflops", type=float, default=H100_BF16_PEAK_TFLOPS,
                   help=f"peak bf16 TFLOP/s of one GPU (H100: {H100_BF16_PEAK_TFLOPS:g})")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation")
    p.add_argument("--why", action="store_true", help=WHY_HELP)
    p.add_argument("--gpus", type=int, nargs="+", metavar="N",
                   help="also print the study's makespan on N GPUs (several N allowed), with a barrier between stages "
                        "and with per-run chains (tools/makespan.py)")
    p.set_defaults(func=_plan)
    p = sub.add_parser("status", help="state of every run: cached (and by which code), queued, running, failed")
    p.add_argument("--why", action="store_true", help=WHY_HELP)
    p.set_defaults(func=_status)
    p = sub.add_parser("gc", help="remove runs no longer in the sweep (dry run unless --yes)")
    p.add_argument("--yes", action="store_true")
    p.set_defaults(func=_gc)
    p = sub.add_parser("validate", help="check params.yaml, the preset, every run's optimizer settings and the data "
                       "files; writes nothing but the --record (the validate stage of dvc.yaml)")
    p.add_argument("--record", default=None, help="once every check passes, write what was checked to this file "
                   "(relative to the project root): the validate stage's output")
    p.set_defaults(func=_validate)
    p = sub.add_parser("calibrate", help="run every per-run stage for a few steps here, at the preset's real shapes, "
                       "in a temporary project; print time, memory, MFU and the whole study extrapolated")
    p.add_argument("--steps", type=int, default=3, help="training steps to measure (default 3)")
    p.add_argument("--width", type=int, default=None, help="FFN width multiplier k (default: the largest swept)")
    p.add_argument("--layers", type=int, default=None, help="measure fewer layers (default: the preset's)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per step (default: train.micro_batch_size, the per-device memory of a step)")
    p.add_argument("--probe-tokens", type=int, default=1024,
                   help="held-out probe N per bucket (pooled: 2N; 0 = the preset's); a train_batch probe "
                   "is the step's batch")
    p.add_argument("--synthetic-data", action="store_true",
                   help="`bin` presets: measure on synthetic GPT-2-vocabulary shards written to the temporary project")
    p.add_argument("--gpu-tflops", type=float, default=None,
                   help=f"peak TFLOP/s of this device, for MFU (default: {H100_BF16_PEAK_TFLOPS:g} on CUDA, "
                   "none on CPU)")
    p.add_argument("--mfu", type=float, default=0.4, help="the MFU `plan` assumes, for its estimate")
    p.set_defaults(func=_calibrate)
    sub.add_parser("recover", help="after a killed `dvc repro`: set aside DVC's own files the kill left half-written "
                   "(.dvc/tmp/rwlock, dvc.lock), so that `dvc repro` can go on").set_defaults(func=_recover)
    p = sub.add_parser("fit-points", help="fit rank ∝ D^β on rank points from any source (CSV)")
    p.add_argument("file")
    p.add_argument("--out", default=None, help="write the fitted table as CSV")
    p.set_defaults(func=_fit_points)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as err:
        print(f"specscale: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
