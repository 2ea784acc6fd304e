"""Typed study spec: a preset from specs/, overridden by params.yaml, validated before anything runs.

The resolved spec is the single source of truth: every run's spec is derived from it (sweep.py) and hashed into the
run's key (cache.py). Sections whose fields never change a result (launcher, cache) are kept apart so that editing
them invalidates nothing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


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


def _did_you_mean(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(candidates))}"


def _keys_at(cfg: DictConfig, parent: str) -> list[str]:
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if node is None and parent.count(".") == 1 and parent.startswith("ablations."):  # an arm not yet in the base
        return [f.name for f in fields(AblationSpec)]
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def _merge_file(base: DictConfig, path: Path, drop: tuple[str, ...] = ()) -> DictConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sections at the top level")
    # a section left empty (`ablations:` with nothing under it, YAML null) keeps the base's, ablations included
    raw = {k: v for k, v in raw.items() if k not in drop and v is not None}
    try:
        return OmegaConf.merge(base, raw)
    except ConfigKeyError as err:
        full = str(err.full_key or err.key or "")
        parent, _, leaf = full.rpartition(".")
        if full in RENAMED:
            raise SpecError(f"{path}: key '{full}' is gone: use {RENAMED[full]}") from None
        raise SpecError(f"{path}: unknown key '{full}'{_did_you_mean(leaf, _keys_at(base, parent))}") from None
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
        raw = yaml.safe_load(params_path.read_text()) if params_path.exists() else None
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
        raw = yaml.safe_load(params_path.read_text()) or {}
        if isinstance(raw, dict) and raw.get("ablations") is not None:
            # params.yaml's ablations are the whole set of arms (so `ablations: {}` drops the preset's), not a merge;
            # `ablations:` left empty keeps the preset's arms
            cfg.ablations = {}
        cfg = _merge_file(cfg, params_path)
    cfg.preset = preset
    validate(cfg, params_path)
    return cfg


def validate(cfg: DictConfig, path: Path) -> None:
    """Impossible values fail here, before anything is written."""
    from specscale.optim.defaults import parse_optimizer_name  # local: keeps spec importable without torch users

    def fail(key: str, msg: str) -> None:
        raise SpecError(f"{path}: key '{key}': {msg}")

    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            fail(key, f"{value!r} is not one of {', '.join(allowed)}")
    for key in ("model.d_model", "model.n_layers", "model.n_heads", "train.steps", "train.batch_size",
                "train.seq_len", "train.log_every", "data.vocab_size", "probe.tokens_per_bucket",
                "probe.pooled_tokens", "probe.chunk_tokens", "launcher.max_parallel", "fit.last_k"):
        if OmegaConf.select(cfg, key) <= 0:
            fail(key, "must be > 0")
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
            if not isinstance(s, int):
                fail(f"{prefix}.seeds[{i}]", f"seed must be an integer, got {s!r}")
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
                fail(f"{prefix}.vary.{dotted}", f"unknown field{_did_you_mean(leaf, known)}")
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


def to_container(cfg: DictConfig | Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
