"""Check the runs a stage is about to read, before it reads them.

The launcher's own check of a stage's finished runs is the quick one (integrity.py: sizes, small files whole). A run
about to be read as an input gets the full one: every file digested whole, so a byte flipped anywhere in a
checkpoint, a token shard or a spectrum is found before it is read, at the cost of reading the run once more (each
input run once per launch, however many runs read it). A damaged input run is set aside (quarantined, its files
named) and its stage is run again through `rebuild` (the stage runner's), upstream runs first; a run that still
lacks an input afterwards is reported and never started on a missing or damaged one.

Which runs are read: a fan-out or single stage's run reads the runs of its spec's `inputs` and, through them, theirs
(a measurement reads the training run's checkpoints and, for probe.source train_batch, its token shards); an
aggregate stage reads the finished runs of the stages it lists (stages/table.py: `reads`), not their inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from specscale.store.integrity import set_aside_if_damaged
from specscale.store.runs import RunStore

Run = tuple[str, str]  # (stage, key)
Rebuild = Callable[[str], int]  # run this stage again (its missing runs are computed); returns its exit code


def check_inputs(store: RunStore, reader: str, needs: Mapping[str, Iterable[Run]], rebuild: Rebuild | None,
                 echo: Callable[[str], None], transitive: bool = True) -> dict[str, list[Run]]:
    """Verify in full every finished run that the readers in `needs` (reader name → the runs it reads) read, and the
    runs those were made from when `transitive`; set damaged ones aside and rebuild them. Returns, for each reader
    that still lacks one, the runs it reads that are not finished (missing before, or damaged and not rebuilt)."""
    depth: dict[Run, int] = {}  # every run read, with its distance from a reader (1: read directly)
    reads: dict[str, set[Run]] = {}
    damaged: list[Run] = []

    def visit(run: Run, d: int, seen: set[Run]) -> None:
        seen.add(run)
        first = run not in depth
        depth[run] = max(depth.get(run, 0), d)
        if first and store.is_done(*run):
            warning = set_aside_if_damaged(store.root, *run, full=True)
            if warning:
                echo(warning)
                damaged.append(run)
        if transitive and store.is_done(*run):  # a set-aside run is not finished: its inputs come with its rebuild
            for upstream in (store.load_spec(*run).get("inputs") or {}).items():
                visit(upstream, d + 1, seen)

    for name, runs in needs.items():
        reads[name] = set()
        for run in runs:
            visit(run, 1, reads[name])
    if damaged and rebuild is not None:
        # upstream first: the rebuild of a run reads its own inputs, which must be there again by then
        for stage in sorted({s for s, _ in damaged}, key=lambda s: -max(depth[r] for r in damaged if r[0] == s)):
            echo(f"[{reader}] computing the {stage} runs set aside above again before going on")
            rebuild(stage)
        for run in damaged:  # what came back (computed, or pulled from a remote) is checked like any input
            if store.is_done(*run) and (warning := set_aside_if_damaged(store.root, *run, full=True)):
                echo(warning)
    lacking = {name: sorted(r for r in runs if not store.is_done(*r)) for name, runs in reads.items()}
    return {name: runs for name, runs in lacking.items() if runs}


def lacking_text(store: RunStore, runs: list[Run]) -> str:
    """What a run that cannot start lacks, for its error log and the failure list."""
    named = ", ".join(str(store.final_dir(*r).relative_to(store.project_root)) for r in runs)
    return (f"input run {named} is not finished (set aside as damaged and not computed again, see above, or never "
            "computed): run `dvc repro` again")
