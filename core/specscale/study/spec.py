"""Typed study spec: a preset from specs/, overridden by params.yaml, validated before anything runs.

The resolved spec is the single source of truth: every run's spec is derived from it (sweep.py) and hashed into the
run's key (cache.py). Sections whose fields never change a result (launcher, cache) are kept apart so that editing
them invalidates nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from specscale.hints.spelling import did_you_mean


class SpecError(ValueError):
    """A bad spec: the message names the file, the key and the fix."""


# The allowed values of each choice field, next to its section: validate() checks them (CHOICES) and code in the
# wings that may import study/ takes them from here.
DATA_SOURCES = ("stdlib", "files", "bin", "hf")  # data.source


@dataclass
class DataSpec:
    source: str = "stdlib"  # DATA_SOURCES
    paths: List[str] = field(default_factory=list)  # files: text globs (.gz/.dz decompressed); bin: train shard globs
    val_paths: List[str] = field(default_factory=list)  # bin: validation shard globs
    max_bytes: Optional[int] = 20_000_000  # cap on corpus text (stdlib, hf; files only with doc_bytes > 0)
    vocab_size: int = 4096  # BPE types to train (ignored for bin: GPT-2's 50257)
    val_every: int = 10  # every val_every-th document goes to validation (interleaved split)
    hf_dataset: Optional[str] = None
    hf_split: str = "train"
    hf_text_field: str = "text"
    # files: 0 = one document per file; N > 0 = each file cut at entry boundaries (a blank line, then an unindented
    # line) into documents of >= N bytes (corpus.split_entries), e.g. 1024 for the English dictionary gcide. Hashed
    # only when > 0 (sweep.KEY_NEUTRAL_FIELDS): adding it moved no run key.
    doc_bytes: int = 0


POS_ENCODINGS = ("rope", "nope")  # model.pos_encoding


@dataclass
class ModelSpec:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_mult: int = 4  # D = ffn_mult · d_model; the sweep sets it
    pos_encoding: str = "rope"  # POS_ENCODINGS
    rope_base: float = 10000.0
    postln_fraction: float = 0.0  # first ⌊L·f⌋ blocks PostLN
    vocab_multiple: int = 64  # embedding rows padded to a multiple of this (GPT-2: 50257 → 50304)


PRECISIONS = ("auto", "fp32", "bf16")  # train.precision
DEVICES = ("auto", "cpu", "cuda")  # train.device


@dataclass
class TrainSpec:
    steps: int = 600
    # Relative arms: an ablation that varies this trains steps × multiplier steps with its own schedule (e.g. the
    # matched-loss arm, 2× AdamW). Resolved into `steps` when the sweep is expanded and never hashed itself.
    steps_multiplier: float = 1.0
    batch_size: int = 16  # sequences per optimizer step (global)
    micro_batch_size: int = 0  # 0 = batch_size (no accumulation)
    seq_len: int = 128
    decay_fraction: float = 0.2  # constant LR, then linear decay to 0 over the last 20%
    log_every: int = 100  # logged steps: 0, 1, every log_every, last
    keep_checkpoints: int = 5  # probe checkpoints: step 0 plus the last K logged steps
    keep_all_checkpoints: bool = False  # keep every logged step (β over training)
    # > 0: validation loss on the first N validation tokens at every kept checkpoint (runs/train/<key>/val_log.jsonl,
    # results/val_steps.csv: perplexity beside β over training). Hashed only when > 0 (sweep.KEY_NEUTRAL_FIELDS).
    checkpoint_val_tokens: int = 0
    val_tokens: int = 65536  # validation perplexity on the first val_tokens tokens of the val split
    diverged_ppl: float = 1000.0  # paper's ×: final validation perplexity above this is diverged (the default rule)
    early_stop_loss_ratio: float = 0.0  # opt-in: stop (diverged) once train loss > ratio × step-0 loss; 0 = off
    precision: str = "auto"  # PRECISIONS; auto: bf16 autocast on CUDA, fp32 on CPU
    device: str = "auto"  # DEVICES
    # Not part of any key: they change speed, not results.
    resume_every: int = 50  # steps between resume checkpoints
    threads: int = 0  # torch CPU threads; 0 = all cores


SITES = ("pre", "post")  # probe.sites (each), fit.headline_site
ACTIVATION_DTYPES = ("float16", "float32")  # probe.dtype
KEEP_ACTIVATIONS = ("none", "all", "post-last")  # probe.keep_activations
BUCKET_RULES = ("paper", "mass")  # probe.bucket_rule
PROBE_SOURCES = ("heldout", "train_batch")  # probe.source


@dataclass
class ProbeSpec:
    tokens_per_bucket: int = 4096  # N per bucket (HEAD, MID, TAIL); recorded with every spectrum
    pooled_tokens: int = 8192  # N for the pooled (all-token) set
    min_bucket_tokens: int = 1000  # skip a bucket with fewer tokens (docs/science.md §5)
    bucket_rule: str = "paper"  # BUCKET_RULES: paper (the authors' code) | mass (earlier rule); tokens/buckets.py
    bucket_edges: List[float] = field(default_factory=lambda: [0.33, 0.67])  # occurrence-mass cuts (paper: 0.33, 0.67)
    sites: List[str] = field(default_factory=lambda: ["pre", "post"])
    dtype: str = "float32"  # activation storage dtype: ACTIVATION_DTYPES
    chunk_tokens: int = 4096  # zarr chunk length along tokens
    keep_activations: str = "none"  # KEEP_ACTIVATIONS: what survives the spectra stage
    alphas: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, float("inf")])
    batch_size: int = 8  # probe forward batch (sequences)
    # heldout: the fixed val probe set (buckets stage) | train_batch: at each checkpoint step s, the training batch
    # of step s (the paper's telemetry, docs/science.md §5); buckets from rank 0's share, pooled = the whole batch
    source: str = "heldout"
    rank_share_tokens: int = 0  # train_batch: tokens of one data-parallel rank's share (0 = the whole batch)


RHO_AGGREGATIONS = ("layer_median", "median_ratio")  # fit.rho_aggregation
GAP_INTERVALS = ("welch", "paired")  # fit.gap_interval
# fit.primary: the set names of tokens/sets.py (ALL_SETS) and the metrics with a β (measure/registry.py FIT_METRICS).
# study/ may not import those wings, so they are listed here; tests/test_claims.py keeps the copies equal.
PRIMARY_BUCKETS = ("HEAD", "MID", "TAIL", "GLOBAL")
PRIMARY_METRICS = ("soft_rank", "hard_rank")
FINAL_STEP = "final"  # fit.primary.step: the trained β (median over the last K kept steps, docs/science.md §6)


@dataclass
class PrimarySpec:
    """The study's one primary endpoint: `comparison` '<optimizer> - <optimizer>' of the main sweep (β of the first
    minus β of the second), at `bucket`, `metric` and `step` ('final', or a kept step's number). It is tested at 95%
    unadjusted; every other optimizer difference the report states sits in a family with Holm-adjusted intervals
    (core/specscale/fit/claims.py)."""

    comparison: str = "muon - adamw"
    bucket: str = "TAIL"  # PRIMARY_BUCKETS
    metric: str = "hard_rank"  # PRIMARY_METRICS
    step: str = FINAL_STEP  # FINAL_STEP or an integer step


def split_comparison(text: str) -> tuple[str, str]:
    """'muon - adamw' (or with '−') → ('muon', 'adamw'); ValueError unless it is two names around one minus."""
    parts = [p.strip() for p in str(text).replace("−", " - ").split(" - ")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{text!r} is not '<optimizer> - <optimizer>', e.g. 'muon - adamw'")
    return parts[0], parts[1]


@dataclass
class FitSpec:
    last_k: int = 5  # median over the last K logged checkpoints
    bootstrap: int = 1000  # layer-resampling bootstrap draws (0 = off)
    reference_optimizer: str = "adamw"
    headline_site: str = "post"  # SITES
    # ρ_α = R_α(post)/R_α(pre): layer_median (per layer and step, then §6 as for any metric) | median_ratio (ratio of
    # the §6 medians of post and pre); core/specscale/fit/fit.py
    rho_aggregation: str = "layer_median"
    # The across-seed interval of β(optimizer) − β(reference): welch (the two optimizers' seeds as independent samples)
    # | paired (per-seed differences; seed s of both shares data order and init); core/specscale/fit/seed_stats.py
    gap_interval: str = "welch"
    primary: PrimarySpec = field(default_factory=PrimarySpec)


@dataclass
class SweepSpec:
    optimizers: List[str] = field(default_factory=lambda: ["adamw"])
    widths: List[int] = field(default_factory=lambda: [1, 2, 4])
    seeds: List[int] = field(default_factory=lambda: [0])


@dataclass
class AblationSpec:
    """An arm: the base spec with `vary` (dotted path → values, cartesian product) over its own sweep."""

    vary: Dict[str, List[Any]] = field(default_factory=dict)
    optimizers: Optional[List[str]] = None  # None = the main sweep's
    widths: Optional[List[int]] = None
    seeds: Optional[List[int]] = None
    optim: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per-optimizer overrides for this arm


CLUSTERS = ("local", "debug", "slurm")  # launcher.cluster


@dataclass
class LauncherSpec:
    cluster: str = "local"  # CLUSTERS
    max_parallel: int = 1  # local: runs at once (2 cores: one run using all cores is fastest)
    timeout_min: int = 1440
    poll_seconds: float = 2.0
    # local only: stages run inside the launcher process instead of one subprocess per run. For light stages the
    # ~4 s of interpreter and torch start-up per subprocess costs more than the work at CPU scale.
    inline_stages: List[str] = field(default_factory=lambda: ["activations", "spectra"])
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    array_parallelism: int = 64
    sbatch_extra: Dict[str, Any] = field(default_factory=dict)
    setup: List[str] = field(default_factory=list)  # shell lines run before each SLURM job


ON_CODE_CHANGE = ("warn", "recompute")  # cache.on_code_change


@dataclass
class CacheSpec:
    """What the launcher does with a finished run made by other code (its code fingerprint differs from today's, see
    fingerprint.py). Never hashed, listed in no dvc.yaml stage's params: changing it invalidates nothing."""

    on_code_change: str = "warn"  # ON_CODE_CHANGE. warn: reuse and say so | recompute: compute again into the same key


@dataclass
class StudySpec:
    preset: str = MISSING
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    optim: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # optimizer name or family → hparam overrides
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    fit: FitSpec = field(default_factory=FitSpec)
    sweep: SweepSpec = field(default_factory=SweepSpec)
    ablations: Dict[str, AblationSpec] = field(default_factory=dict)
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    cache: CacheSpec = field(default_factory=CacheSpec)


CHOICES = {
    "data.source": DATA_SOURCES,
    "model.pos_encoding": POS_ENCODINGS,
    "train.precision": PRECISIONS,
    "train.device": DEVICES,
    "probe.dtype": ACTIVATION_DTYPES,
    "probe.keep_activations": KEEP_ACTIVATIONS,
    "probe.bucket_rule": BUCKET_RULES,
    "probe.source": PROBE_SOURCES,
    "launcher.cluster": CLUSTERS,
    "fit.headline_site": SITES,
    "fit.rho_aggregation": RHO_AGGREGATIONS,
    "fit.gap_interval": GAP_INTERVALS,
    "cache.on_code_change": ON_CODE_CHANGE,
}


# Keys that were replaced: a spec still using one is told what replaced it.
RENAMED = {
    "train.divergence_ratio": "'train.early_stop_loss_ratio' (opt-in early stop, 0 = off; by default a run is "
                              "diverged when its validation perplexity exceeds 'train.diverged_ppl', the paper's ×)",
}


def _keys_at(cfg: DictConfig, parent: str) -> list[str]:
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if node is None and parent.count(".") == 1 and parent.startswith("ablations."):  # an arm not yet in the base
        return [f.name for f in fields(AblationSpec)]
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`; a file that is missing or not YAML raises SpecError with the file, line and
    column of the parser's mark (one line, not the parser's multi-line report)."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({err.context} on line {err.context_mark.line + 1})" if err.context and err.context_mark else ""
        raise SpecError(f"{path}{where}: not valid YAML: {err.problem}{context}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def _merge_file(base: DictConfig, path: Path, drop: tuple[str, ...] = ()) -> DictConfig:
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sections at the top level")
    # a section left empty (`ablations:` with nothing under it, YAML null) keeps the base's, ablations included
    raw = {k: v for k, v in raw.items() if k not in drop and v is not None}
    for section, value in raw.items():
        if section in base and isinstance(base[section], DictConfig) and not isinstance(value, dict):
            raise SpecError(f"{path}: key '{section}': a mapping of fields is needed (e.g. '{section}: {{...}}'), "
                            f"got {value!r}")
    try:
        return OmegaConf.merge(base, raw)
    except ConfigKeyError as err:
        full = str(err.full_key or err.key or "")
        parent, _, leaf = full.rpartition(".")
        if full in RENAMED:
            raise SpecError(f"{path}: key '{full}' is gone: use {RENAMED[full]}") from None
        raise SpecError(f"{path}: unknown key '{full}'; {did_you_mean(leaf, _keys_at(base, parent))}") from None
    except (ValidationError, OmegaConfBaseException) as err:
        msg = str(err).splitlines()[0]
        raise SpecError(f"{path}: key '{err.full_key}': {msg} (fix the value's type)") from None


def presets_dir(project_root: Path) -> Path:
    return project_root / "specs"


def load_study(params_path: Path | str = "params.yaml", preset: str | None = None) -> DictConfig:
    """Preset (specs/<name>.yaml or a path) ← params.yaml, validated. Raises SpecError naming file and key."""
    params_path = Path(params_path).resolve()
    root = params_path.parent
    base = OmegaConf.structured(StudySpec)
    if preset is None:
        raw = read_yaml(params_path) if params_path.exists() else None
        if not isinstance(raw, dict) or "preset" not in raw:
            raise SpecError(f"{params_path}: key 'preset' is missing (e.g. 'preset: tiny'; presets live in specs/)")
        preset = str(raw["preset"])
    preset_path = Path(preset) if preset.endswith((".yaml", ".yml")) else presets_dir(root) / f"{preset}.yaml"
    if not preset_path.is_absolute():
        preset_path = root / preset_path
    if not preset_path.exists():
        names = sorted(p.stem for p in presets_dir(root).glob("*.yaml"))
        raise SpecError(f"{params_path}: key 'preset': no preset '{preset}' (known: {', '.join(names)})")
    cfg = _merge_file(base, preset_path, drop=("preset",))
    if params_path.exists():
        raw = read_yaml(params_path) or {}
        if isinstance(raw, dict) and raw.get("ablations") is not None:
            # params.yaml's ablations are the whole set of arms (so `ablations: {}` drops the preset's), not a merge;
            # `ablations:` left empty keeps the preset's arms
            cfg.ablations = {}
        cfg = _merge_file(cfg, params_path)
    cfg.preset = preset
    validate(cfg, params_path)
    check_primary(cfg, params_path)
    return cfg


# Numeric fields that must be > 0 or ≥ 0. Checked on the study and on every ablation arm's varied spec, so that no
# value reaches a job that would fail there after writing its work dir, or silently do something else
# (`train.keep_checkpoints: 0` would keep every logged step, `launcher.max_parallel: 0` would never start a run).
POSITIVE_FIELDS = (
    "data.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.rope_base", "model.vocab_multiple",
    "train.steps", "train.batch_size", "train.seq_len", "train.log_every", "train.keep_checkpoints",
    "train.val_tokens", "train.resume_every", "probe.tokens_per_bucket", "probe.pooled_tokens", "probe.chunk_tokens",
    "probe.batch_size", "fit.last_k", "launcher.max_parallel", "launcher.timeout_min", "launcher.poll_seconds",
    "launcher.nodes", "launcher.cpus_per_task", "launcher.mem_gb", "launcher.array_parallelism",
)
NON_NEGATIVE_FIELDS = ("train.micro_batch_size", "train.checkpoint_val_tokens", "train.threads",
                       "probe.min_bucket_tokens", "fit.bootstrap", "launcher.gpus_per_node")

Fail = Callable[[str, str], NoReturn]  # (dotted key, what is wrong and the fix) → raises SpecError


def _check_fields(cfg: DictConfig, fail: Fail) -> None:
    """Each section's values: choices, bounds, and the fields they depend on (one spec: the study or an arm's)."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            fail(key, f"{value!r} is not one of {', '.join(allowed)}")
    for key in POSITIVE_FIELDS:
        value = OmegaConf.select(cfg, key)
        if not value > 0:
            fail(key, f"must be > 0, got {value}")
    for key in NON_NEGATIVE_FIELDS:
        value = OmegaConf.select(cfg, key)
        if not value >= 0:
            fail(key, f"must be ≥ 0, got {value}")
    if cfg.train.steps_multiplier <= 0:
        fail("train.steps_multiplier", "must be > 0 (an ablation arm's steps = train.steps × multiplier)")
    if cfg.data.val_every < 2:
        fail("data.val_every", "must be ≥ 2 (every val_every-th document is validation)")
    if cfg.data.source in ("files", "bin") and not cfg.data.paths:
        fail("data.paths", f"data.source '{cfg.data.source}' needs at least one path or glob")
    if cfg.data.doc_bytes < 0 or (cfg.data.doc_bytes and cfg.data.source != "files"):
        fail("data.doc_bytes", f"0 (one document per file) or bytes per document > 0 for data.source 'files'; got "
                               f"{cfg.data.doc_bytes} with source '{cfg.data.source}'")
    if cfg.data.source == "hf" and not cfg.data.hf_dataset:
        fail("data.hf_dataset", "data.source 'hf' needs a dataset name")
    if cfg.train.early_stop_loss_ratio < 0 or 0 < cfg.train.early_stop_loss_ratio <= 1:
        fail("train.early_stop_loss_ratio", "0 (off) or a ratio > 1 to the step-0 loss, e.g. 1.5")
    if not cfg.train.diverged_ppl > 1:
        fail("train.diverged_ppl", "must be > 1 (the paper's × is validation perplexity > 1000)")
    if not 0.0 <= cfg.train.decay_fraction <= 1.0:
        fail("train.decay_fraction", "must be in [0, 1]")
    if cfg.train.micro_batch_size and cfg.train.batch_size % cfg.train.micro_batch_size:
        fail("train.micro_batch_size", f"must divide train.batch_size={cfg.train.batch_size}")
    bad_sites = set(cfg.probe.sites) - set(SITES)
    if bad_sites or not cfg.probe.sites:
        fail("probe.sites", f"sites are {' and/or '.join(map(repr, SITES))}, got {list(cfg.probe.sites)}")
    if any(a < 0 for a in cfg.probe.alphas):
        fail("probe.alphas", "Rényi orders must be ≥ 0")
    share, batch_tokens = int(cfg.probe.rank_share_tokens), int(cfg.train.batch_size) * int(cfg.train.seq_len)
    if share < 0 or share % int(cfg.train.seq_len) or share > batch_tokens:
        fail("probe.rank_share_tokens", f"whole train.seq_len windows within one batch of {batch_tokens} tokens (0 = "
                                        f"the whole batch), e.g. 131072 = 1 of 4 ranks at 160M; got {share}")
    edges = list(cfg.probe.bucket_edges)
    if len(edges) != 2 or not 0 < edges[0] < edges[1] < 1:
        fail("probe.bucket_edges", f"two increasing mass fractions in (0, 1), e.g. [0.33, 0.67]; got {edges}")
    if cfg.data.max_bytes is not None and not cfg.data.max_bytes > 0:
        fail("data.max_bytes", f"bytes of text > 0, or null for no cap; got {cfg.data.max_bytes}")
    if cfg.data.paths and cfg.data.source not in ("files", "bin"):
        fail("data.paths", f"only data.source 'files' and 'bin' read files; source '{cfg.data.source}' ignores them")
    if cfg.data.val_paths and cfg.data.source != "bin":
        fail("data.val_paths", f"only data.source 'bin' reads validation shards; source '{cfg.data.source}' takes "
                               f"every data.val_every-th document")
    if cfg.model.ffn_mult != ModelSpec.ffn_mult:
        fail("model.ffn_mult", "the sweep sets it: list FFN width multipliers in sweep.widths (or an arm's widths)")
    if not 0.0 <= cfg.model.postln_fraction <= 1.0:
        fail("model.postln_fraction", f"a fraction of the blocks in [0, 1]; got {cfg.model.postln_fraction}")
    for key in ("train.val_tokens", "train.checkpoint_val_tokens"):  # evaluation reads whole windows
        value = OmegaConf.select(cfg, key)
        if value and value < cfg.train.seq_len:
            fail(key, f"at least one window of train.seq_len={cfg.train.seq_len} tokens; got {value}")
    if not cfg.probe.alphas:
        fail("probe.alphas", "list at least one Rényi order, e.g. [1.0]")


def validate(cfg: DictConfig, path: Path) -> None:
    """Impossible values fail here, before anything is written."""
    from specscale.optim.defaults import parse_optimizer_name  # local: keeps spec importable without torch users

    def fail(key: str, msg: str) -> NoReturn:
        raise SpecError(f"{path}: key '{key}': {msg}")

    _check_fields(cfg, fail)

    def check_arm(prefix: str, optimizers, widths, seeds, model_overrides: dict) -> None:
        for i, name in enumerate(optimizers or []):
            try:
                parse_optimizer_name(str(name))
            except ValueError as err:
                fail(f"{prefix}.optimizers[{i}]", str(err))
        for i, w in enumerate(widths or []):
            if not isinstance(w, int) or w <= 0:
                fail(f"{prefix}.widths[{i}]", f"FFN width multiplier must be a positive integer, got {w!r}")
        for i, s in enumerate(seeds or []):
            if not isinstance(s, int) or s < 0:
                fail(f"{prefix}.seeds[{i}]", f"seed must be an integer ≥ 0, got {s!r}")
        for what, values in (("optimizers", optimizers), ("widths", widths), ("seeds", seeds)):
            if values is None:  # an arm without the key takes the main sweep's
                continue
            if not len(values):
                fail(f"{prefix}.{what}", "an empty list trains nothing: list at least one value (an arm without the "
                                         "key takes the main sweep's)")
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                fail(f"{prefix}.{what}", f"{list(values)} lists {', '.join(repeated)} more than once: a repeated "
                                         "value is the same run and would silently count once; list each once")
        varied = [k for k in ("n_heads", "d_model") if k in model_overrides]
        heads_key = f"{prefix}.vary.model.{varied[0]}" if varied else "model.n_heads"
        for d in model_overrides.get("d_model", [cfg.model.d_model]):  # vary takes the cartesian product
            for h in model_overrides.get("n_heads", [cfg.model.n_heads]):
                if not isinstance(h, int) or h <= 0 or not isinstance(d, int) or d <= 0 or d % h:
                    fail(heads_key, f"{h} heads do not divide d_model={d}")
                if "rope" in model_overrides.get("pos_encoding", [cfg.model.pos_encoding]) and (d // h) % 2:
                    fail(heads_key, f"RoPE needs an even head dimension; d_model={d} / {h} heads = {d // h}")

    check_arm("sweep", cfg.sweep.optimizers, cfg.sweep.widths, cfg.sweep.seeds, {})
    if not cfg.sweep.optimizers or not cfg.sweep.widths or not cfg.sweep.seeds:
        fail("sweep", "optimizers, widths and seeds must each list at least one value")
    for name, arm in cfg.ablations.items():
        prefix = f"ablations.{name}"
        model_vary: dict[str, Any] = {}
        for dotted, values in arm.vary.items():
            section, _, leaf = dotted.partition(".")
            if not len(values):
                fail(f"{prefix}.vary.{dotted}", "an empty list trains nothing: list at least one value")
            if dotted == "optim.lr_multiplier":  # an lr sweep arm (sweep.LR_MULTIPLIER): each optimizer's lr × m
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
                    fail(f"{prefix}.vary.{dotted}", f"multipliers of each optimizer's lr must be numbers > 0; got "
                                                    f"{list(values)}")
                continue
            if section not in ("model", "train", "data", "probe") or not leaf:
                fail(f"{prefix}.vary.{dotted}", "vary paths look like 'model.n_heads', 'train.steps' or "
                                                "'optim.lr_multiplier'")
            known = _keys_at(cfg, section)
            if leaf not in known or leaf == "ffn_mult":
                fail(f"{prefix}.vary.{dotted}", f"unknown field; {did_you_mean(leaf, known)}")
            try:
                for v in values:
                    OmegaConf.merge(cfg[section], {leaf: v})
            except OmegaConfBaseException as err:
                fail(f"{prefix}.vary.{dotted}", str(err).splitlines()[0])
            if section == "model":
                model_vary[leaf] = list(values)
        check_arm(prefix, arm.optimizers, arm.widths, arm.seeds, model_vary)
        for pos in model_vary.get("pos_encoding", []):
            if pos not in POS_ENCODINGS:
                fail(f"{prefix}.vary.model.pos_encoding", f"{pos!r} is not {' or '.join(POS_ENCODINGS)}")
        for f in model_vary.get("postln_fraction", []):
            if not 0.0 <= float(f) <= 1.0:
                fail(f"{prefix}.vary.model.postln_fraction", "fractions lie in [0, 1]")
        _check_arm_variants(cfg, prefix, arm.vary, fail)
    _check_reference(cfg, fail)


def _check_arm_variants(cfg: DictConfig, prefix: str, vary: DictConfig, fail: Fail) -> None:
    """Every combination of an arm's varied values, applied to the study, through the study's own field checks: a
    varied `train.steps: [0]`, or a `train.batch_size` that `train.micro_batch_size` does not divide, fails here,
    naming the arm, instead of inside its jobs."""
    paths = [str(p) for p in vary if str(p) != "optim.lr_multiplier"]  # not a field: checked above
    for values in itertools.product(*(list(vary[p]) for p in paths)):
        varied = dict(zip(paths, values))
        overrides: dict[str, dict[str, Any]] = {}
        for dotted, value in varied.items():
            section, leaf = dotted.split(".", 1)
            overrides.setdefault(section, {})[leaf] = value

        def arm_fail(key: str, msg: str) -> NoReturn:
            if key in varied:
                fail(f"{prefix}.vary.{key}", msg)
            fail(key, f"{msg} (in arm {prefix}, with {', '.join(f'{k}={v}' for k, v in varied.items())})")

        _check_fields(OmegaConf.merge(cfg, overrides), arm_fail)


def _check_reference(cfg: DictConfig, fail: Fail) -> None:
    """fit.reference_optimizer is what every β difference is taken against: in a study that trains several
    optimizers, one that is not trained would leave beta_gaps.csv empty (and the report blaming the arms)."""
    from specscale.optim.defaults import parse_optimizer_name

    reference = str(cfg.fit.reference_optimizer)
    try:
        parse_optimizer_name(reference)
    except ValueError as err:
        fail("fit.reference_optimizer", str(err))
    trained = {str(o) for o in cfg.sweep.optimizers}
    for arm in cfg.ablations.values():
        trained |= {str(o) for o in (arm.optimizers if arm.optimizers is not None else cfg.sweep.optimizers)}
    if len(trained) > 1 and reference not in trained:
        fail("fit.reference_optimizer", f"'{reference}' is not trained in this study; β differences are taken "
                                        f"against it: name one of {', '.join(sorted(trained))}")


def check_primary(cfg: DictConfig, path: Path) -> None:
    """fit.primary names two optimizers, a set, a metric with a β and a step that exist; in a main sweep of several
    optimizers, both must be trained there (the endpoint is read from the main sweep)."""
    from specscale.optim.defaults import parse_optimizer_name  # local, as in validate

    primary = cfg.fit.primary
    try:
        names = split_comparison(primary.comparison)
        for name in names:
            parse_optimizer_name(name)
    except ValueError as err:
        raise SpecError(f"{path}: key 'fit.primary.comparison': {err}") from None
    if names[0] == names[1]:
        raise SpecError(f"{path}: key 'fit.primary.comparison': {primary.comparison!r} compares an optimizer with "
                        "itself")
    trained = [str(o) for o in cfg.sweep.optimizers]
    missing = [n for n in names if n not in trained]
    if len(trained) > 1 and missing:
        ref = str(cfg.fit.reference_optimizer)
        other = next((o for o in trained if o != ref), trained[0])
        raise SpecError(f"{path}: key 'fit.primary.comparison': {', '.join(missing)} not in sweep.optimizers "
                        f"({', '.join(trained)}): the primary endpoint is read from the main sweep; declare one of "
                        f"its comparisons, e.g. fit: {{primary: {{comparison: {other} - {ref}}}}}")
    for key, allowed in (("bucket", PRIMARY_BUCKETS), ("metric", PRIMARY_METRICS)):
        if primary[key] not in allowed:
            raise SpecError(f"{path}: key 'fit.primary.{key}': {primary[key]!r} is not one of {', '.join(allowed)}")
    step = str(primary.step)
    if step != FINAL_STEP and not (step.isdigit()):
        raise SpecError(f"{path}: key 'fit.primary.step': {step!r} is neither '{FINAL_STEP}' (the trained β) nor a "
                        "kept step's number ≥ 0")


def to_container(cfg: DictConfig | Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
