"""``llmbatch estimate`` and ``run --dry-run``: what a run would send and cost, sending nothing.

For the prompts a run would send now (ids a previous run of the same job already
recorded are left out, as ``run`` would skip them):

- input tokens, counted offline with OpenAI's tokenizer (pricing/tokens.py): exact for
  OpenAI's models, an approximation for others (docs/cost.md gives the measured error);
- output tokens as a range: *high* is what the budget (``--max-cost``) assumes, each
  request's ``max_tokens`` (else the profile's, else the model's context window);
  *expected* and *low* are the previous run's mean and 10th percentile of output tokens
  per request when one exists, else 256 per request (assumed) and 0;
- cost low / expected / high at the run's prices (``[prices]``, then genai-prices).

Nothing is written; the run directory is only read.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch.cli.job import default_run_dir
from llmbatch.config.model import RunConfig
from llmbatch.engine.core import token_bounds
from llmbatch.errors import InputError, RunDirError
from llmbatch.metrics import format_usd
from llmbatch.pacing import DEFAULT_OUTPUT_ESTIMATE
from llmbatch.pricing import PriceBook, Rates, TokenUsage, cost_of, request_model
from llmbatch.pricing.tokens import count_request_tokens, encoding_for_model, get_encoding
from llmbatch.rundir.identity import describe_changes, run_identity
from llmbatch.rundir.layout import META, RESULTS
from llmbatch.rundir.reader import iter_records
from llmbatch.rundir.resultline import ResultLine
from llmbatch.rundir.results import iter_result_lines

if TYPE_CHECKING:
    from llmbatch.rundir.shard import Shard

__all__ = ["Estimate", "estimate_command", "estimate_run", "format_estimate", "format_prices"]


_RANGE = ("low", "expected", "high")


@dataclass
class History:
    """Output lengths measured by a previous run of the same job."""

    records: int = 0
    mean_output: float = 0.0
    p10_output: int = 0
    cost_usd: float = 0.0


@dataclass
class Estimate:
    """What a run of ``prompts`` would send now, and what it would cost."""

    prompts: str
    provider: str
    model: str
    run_dir: str
    requests: int = 0
    already_done: int = 0
    invalid_lines: int = 0
    input_tokens: int = 0
    encoding: str = ""
    exact: bool = False  # the encoding is the model's own (OpenAI)
    output_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_RANGE, 0))
    cost_usd: dict[str, float] | None = None  # of the priced requests; None: none priced
    unpriced_requests: int = 0
    unpriced_models: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    history: History | None = None
    history_note: str | None = None
    requests_without_cap: int = 0  # no max_tokens: high assumes the context window
    assumed_cap: int | None = None
    assumed_cap_is_window: bool = True  # else UNBOUNDED_OUTPUT_TOKENS, a guess

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``--json``)."""
        h = self.history
        return {
            "prompts": self.prompts,
            "provider": self.provider,
            "model": self.model,
            "run_dir": self.run_dir,
            "requests": self.requests,
            "already_done": self.already_done,
            "invalid_lines": self.invalid_lines,
            "input_tokens": self.input_tokens,
            "tokenizer": {"encoding": self.encoding, "exact": self.exact},
            "output_tokens": self.output_tokens,
            "cost_usd": None
            if self.cost_usd is None
            else {k: round(v, 8) for k, v in self.cost_usd.items()},
            "price_sources": self.sources,
            "unpriced_requests": self.unpriced_requests,
            "unpriced_models": self.unpriced_models,
            "history": None
            if h is None
            else {
                "records": h.records,
                "mean_output_tokens": round(h.mean_output, 1),
                "p10_output_tokens": h.p10_output,
                "spent_usd": round(h.cost_usd, 8),
            },
            "requests_without_max_tokens": self.requests_without_cap,
        }


def estimate_run(cfg: RunConfig, prompts: Path, *, shard: Shard | None = None) -> Estimate:
    """Count and price what ``llmbatch run prompts`` would send with ``cfg`` now."""
    profile = cfg.provider
    run_dir = default_run_dir(cfg, prompts, shard)
    est = Estimate(str(prompts), profile.name, profile.model, str(run_dir))
    done, est.history, est.history_note = _history(cfg, prompts, run_dir)
    enc_name, est.exact = encoding_for_model(profile.model)
    est.encoding = enc_name
    encoding = get_encoding(enc_name)
    book = PriceBook(cfg)
    costs = dict.fromkeys(_RANGE, 0.0)
    items: Any = iter_records(prompts)
    if shard is not None:
        from llmbatch.rundir.shard import select_shard

        items = select_shard(items, shard)
    for item in items:
        if isinstance(item, InputError):
            est.invalid_lines += 1
            continue
        if item.id in done:
            est.already_done += 1
            continue
        est.requests += 1
        body = {**profile.params, **item.body}
        n_in = count_request_tokens(body, encoding)
        est.input_tokens += n_in
        rates = book.rates(request_model(item.body, profile))
        cap = _output_cap(item, rates, cfg)
        if not _has_cap(body) and profile.kind != "anthropic":
            est.requests_without_cap += 1
            est.assumed_cap = cap
            est.assumed_cap_is_window = rates is not None and rates.context_window is not None
        out = _outputs(cap, est.history)
        for k in _RANGE:
            est.output_tokens[k] += out[k]
        if rates is None:
            est.unpriced_requests += 1
            continue
        if rates.source not in est.sources:
            est.sources.append(rates.source)
        for k in _RANGE:
            costs[k] += cost_of(TokenUsage(input=n_in, output=out[k]), rates).usd
    est.unpriced_models = list(book.unpriced)
    est.cost_usd = costs if est.requests > est.unpriced_requests else None
    if est.requests == 0 and est.already_done == 0 and est.invalid_lines == 0:
        raise InputError("contains no prompts", path=str(prompts))
    return est


def _has_cap(body: dict[str, Any]) -> bool:
    return any(
        isinstance(body.get(k), int) and body[k] > 0
        for k in ("max_completion_tokens", "max_tokens", "max_output_tokens")
    )


def _output_cap(item: Any, rates: Rates | None, cfg: RunConfig) -> int | None:
    """The most output tokens a request can get (the budget's bound); None: unbounded."""
    if rates is not None:
        return token_bounds(item, rates, cfg.provider)[1]
    body = {**cfg.provider.params, **item.body}
    for k in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return 1024 if cfg.provider.kind == "anthropic" else None


def _outputs(cap: int | None, history: History | None) -> dict[str, int]:
    bound = cap if cap is not None else DEFAULT_OUTPUT_ESTIMATE
    if history is not None and history.records:
        expected = min(bound, round(history.mean_output))
        low = min(bound, history.p10_output)
    else:
        expected, low = min(bound, DEFAULT_OUTPUT_ESTIMATE), 0
    return {"low": low, "expected": expected, "high": bound}


def _history(
    cfg: RunConfig, prompts: Path, run_dir: Path
) -> tuple[set[str], History | None, str | None]:
    """Ids already recorded in ``run_dir`` and the output lengths they measured."""
    results = run_dir / RESULTS
    if not results.is_file():
        return set(), None, None
    try:
        old = orjson.loads((run_dir / META).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        old = None
    if isinstance(old, dict):
        changes = describe_changes(old, {**run_identity(cfg, prompts), "shard": old.get("shard")})
        if changes:
            return set(), None, f"{run_dir} holds a run for another target ({changes[0]})"
    done: set[str] = set()
    lengths: Counter[int] = Counter()
    hist = History()
    try:
        for _, rec in iter_result_lines(results):
            line = ResultLine.parse(rec)
            if line is None:
                continue
            done.add(line.custom_id)
            if line.cost is not None:
                hist.cost_usd += line.cost.usd
            if line.ok:
                n = line.request_metrics().output_tokens
                lengths[n] += 1
    except RunDirError as exc:
        return set(), None, str(exc)
    total = sum(lengths.values())
    if total:
        hist.records = total
        hist.mean_output = sum(n * c for n, c in lengths.items()) / total
        rank, seen = max(1, math.ceil(total * 0.10)), 0
        for n in sorted(lengths):
            seen += lengths[n]
            if seen >= rank:
                hist.p10_output = n
                break
    return done, hist if total else None, None


def format_estimate(est: Estimate) -> str:
    """The estimate as a few lines of text."""
    tok = est.output_tokens
    lines = [
        f"estimate: {est.prompts} -> {est.provider} ({est.model or 'no model'}); nothing sent",
        f"  requests       {est.requests:,} to send ({est.already_done:,} already done in "
        f"{est.run_dir}, {est.invalid_lines:,} invalid lines)",
        f"  input tokens   {est.input_tokens:,} ({est.encoding}: "
        + ("OpenAI's own count for this model)" if est.exact else "approximate for this model)"),
        f"  output tokens  low {tok['low']:,}  expected {tok['expected']:,}  high {tok['high']:,}",
    ]
    h = est.history
    if h is not None:
        lines.append(
            f"                 low/expected: the previous run's {h.records:,} answers "
            f"(p10 {h.p10_output:,}, mean {h.mean_output:,.0f} tokens each)"
        )
    else:
        lines.append(
            f"                 expected: {DEFAULT_OUTPUT_ESTIMATE} per request, assumed (no "
            "previous run of this job); high: max_tokens of each request"
        )
    if est.requests_without_cap:
        cap = f"{est.assumed_cap:,}" if est.assumed_cap else f"{DEFAULT_OUTPUT_ESTIMATE}"
        why = "the model's context window" if est.assumed_cap_is_window else "assumed"
        lines.append(
            f"                 {est.requests_without_cap:,} requests set no max_tokens: high "
            f"counts {cap} each ({why}); set max_tokens to bound it"
        )
    if est.history_note:
        lines.append(f"                 (no history: {est.history_note})")
    if est.cost_usd is not None:
        c = est.cost_usd
        lines.append(
            f"  cost (USD)     low {format_usd(c['low'])}  expected {format_usd(c['expected'])}  "
            f"high {format_usd(c['high'])}"
        )
        for source in est.sources:
            lines.append(f"  price          {source}")
    if est.unpriced_requests:
        models = ", ".join(est.unpriced_models) or "?"
        lines.append(
            f"  {'not priced' if est.cost_usd is not None else 'cost (USD)':<14} "
            f"{est.unpriced_requests:,} requests: no price for {models} "
            "(see `llmbatch prices`; [prices] in config.toml adds one)"
        )
    if h is not None and h.cost_usd:
        lines.append(f"  already spent  {format_usd(h.cost_usd)} by the records in {est.run_dir}")
    return "\n".join(lines)


def estimate_command(
    cfg: RunConfig, prompts: Path, *, shard: str | None = None, as_json: bool = False
) -> int:
    """Print the estimate; the exit code (0: nothing was sent, nothing written)."""
    from llmbatch.cli.run import EXIT_OK, echo

    parsed = None
    if shard:
        from llmbatch.rundir.shard import parse_shard

        parsed = parse_shard(shard)
    est = estimate_run(cfg, prompts, shard=parsed)
    if as_json:
        echo(orjson.dumps(est.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        echo(format_estimate(est))
    return EXIT_OK


def format_prices(model: str, provider: str, rates: Rates) -> str:
    """``llmbatch prices``: a model's prices per million tokens and their source."""
    names = {
        "input": "input",
        "cached_input": "cached input",
        "cache_write": "cache write",
        "output": "output",
        "reasoning": "reasoning",
    }
    per = rates.per_million()
    lines = [
        f"{model} at {provider} (USD per million tokens):",
        "  " + ", ".join(f"{names[k]} {per[k]:g}" for k in names),
    ]
    tiers = {k: getattr(rates, k).tiers for k in names if getattr(rates, k).tiers}
    starts = sorted({start for ts in tiers.values() for start, _ in ts})
    for start in starts:
        above = ", ".join(
            f"{names[k]} {price:g}" for k, ts in tiers.items() for s, price in ts if s == start
        )
        lines.append(f"  above {start:,} input tokens in a request: {above}")
    if rates.context_window:
        lines.append(f"  context window: {rates.context_window:,} tokens")
    lines.append(f"  source: {rates.source}")
    return "\n".join(lines)
