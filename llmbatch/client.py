"""The public library API: ``Client`` (async) and ``run`` (sync); batches are batch.py's.

One ``Client`` is one shared engine for an application's lifetime: one connection
pool, one rate governor, one retry policy and one concurrency limit shared by every
``complete``, ``stream`` and ``batch`` call from any number of tasks. Nothing is read
from the working directory or the environment unless asked: ``Client.from_config``
reads a config file (and ``LLMBATCH_*``); otherwise only the provider's API key
variable is consulted, when no ``api_key`` is given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from llmbatch.batch import Batch, BatchProgress, ClosesOnExit, _BatchOptions
from llmbatch.clock import now
from llmbatch.config.load import load_config
from llmbatch.config.model import (
    Limits,
    MockSettings,
    ModelPrices,
    RetryPolicy,
    RunConfig,
    Timeouts,
)
from llmbatch.config.options import ClientKeywords, options_in
from llmbatch.config.profiles import resolve_api_key
from llmbatch.engine import Engine, TextTarget
from llmbatch.engine.arrivals import ArrivalProfile
from llmbatch.engine.fdlimit import fit_run_config
from llmbatch.errors import (
    ConcurrencyCappedWarning,
    ConfigError,
    InputError,
    InsecureTLSWarning,
    ProxyIgnoredWarning,
    RequestError,
)
from llmbatch.http import ClientOptions, make_client
from llmbatch.http.proxy import ignored_proxy
from llmbatch.metrics import INPUT_ERROR, SLO
from llmbatch.pricing import CostBudget, PriceBook, Spend
from llmbatch.providers import make_provider
from llmbatch.records import Outcome, PromptRecord
from llmbatch.redaction import header_secrets, url_secrets
from llmbatch.result import Result
from llmbatch.rundir.reader import parse_item
from llmbatch.rundir.resultline import result_line

if TYPE_CHECKING:
    pass

__all__ = ["AnswerStream", "Client", "Prompt", "Prompts", "run"]

Prompt = str | dict[str, Any]
"""One prompt: a string (sent as the user message) or an input-line dict of any of the
three shapes the reader accepts (``prompt``, ``messages``, OpenAI Batch)."""
Prompts = str | os.PathLike[str] | Iterable[Prompt] | AsyncIterable[Prompt]
"""A JSONL file (a path; a plain string is taken as a path too), or an iterable or async
iterable of prompts."""

_SECTIONS = {"timeouts": Timeouts, "retry": RetryPolicy, "mock": MockSettings}
_CLIENT_OPTIONS = frozenset(o.name for o in options_in("client"))


class Client(ClosesOnExit):
    """An LLM client that streams, retries, paces and bounds concurrency for you.

    ``provider`` names a built-in profile (``mock``, ``openai``, ``anthropic``,
    ``vllm``, ``llamacpp``, ``ollama``); ``base_url``, ``model``, ``api_key_env``,
    ``kind``, ``headers`` and ``params`` override it. ``concurrency`` is an int or
    ``"auto"`` (adaptive, up to ``max_concurrency``). Other options, as in config.toml:
    ``rpm``, ``tpm``, ``input_tpm``, ``output_tpm``, ``limits`` (Limits or dict),
    ``timeouts`` (Timeouts or dict), ``retry`` (RetryPolicy or dict), ``mock``
    (MockSettings or dict), ``http2``, ``insecure``, ``ca_bundle`` (a PEM file of CAs
    to trust), ``grace_s``, ``max_concurrency``, ``max_cost`` (USD: a request that could
    pass it is not sent, BudgetExceeded; a batch stops taking prompts), ``prices``
    (``{model: ModelPrices or dict}``, USD per million tokens, over the bundled data).

    Use as ``async with llmbatch.Client(...) as llm:``; the pool and (for
    ``provider="mock"``) the embedded mock server live until the block ends.
    """

    def __init__(
        self,
        provider: str = "mock",
        *,
        api_key: str | None = None,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        limits: Limits | Mapping[str, Any] | None = None,
        timeouts: Timeouts | Mapping[str, Any] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        mock: MockSettings | Mapping[str, Any] | None = None,
        prices: Mapping[str, ModelPrices | Mapping[str, Any]] | None = None,
        **options: Unpack[ClientKeywords],
    ) -> None:
        tables = {"timeouts": timeouts, "retry": retry, "mock": mock, "prices": prices}
        profile = {"kind": kind, "headers": headers, "params": params, "limits": limits}
        self._cfg = _options_config(provider, tables, profile, dict(options))
        self._api_key = api_key if api_key is not None else resolve_api_key(self._cfg.provider)
        self._engine: Engine | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._batches: set[Batch] = set()
        self._pacer: Any = None
        self._concurrency: Any = None
        self._budget: Spend | None = None
        self._counted_dirs: set[Path] = set()

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, *, environ: bool = True, **flags: Any
    ) -> Client:
        """A Client configured like the CLI: ``path`` (or ./config.toml when it exists),
        then ``LLMBATCH_*`` variables unless ``environ=False``, then ``flags``
        (the CLI's option names: ``provider``, ``concurrency``, ``base_url``, ...)."""
        where = None if path is None else Path(os.fspath(path))
        cfg = load_config(where, flags=flags, environ=None if environ else {})
        return cls._for_run(cfg)

    @classmethod
    def _for_run(
        cls,
        cfg: RunConfig,
        *,
        api_key: str | None = None,
        pacer: Any = None,
        concurrency: Any = None,
        budget: Spend | None = None,
    ) -> Client:
        """Internal: a Client for an already merged RunConfig (the CLI's and Ray's way in);
        ``pacer``, ``concurrency`` and ``budget`` replace its rate governor, its ``auto``
        controller and its ``max_cost`` budget (Ray's workers share the cluster's)."""
        self = cls.__new__(cls)
        self._cfg = cfg
        self._api_key = api_key if api_key is not None else resolve_api_key(cfg.provider)
        self._engine = None
        self._stack = None
        self._batches = set()
        self._pacer = pacer
        self._concurrency = concurrency
        self._budget = budget
        self._counted_dirs = set()
        return self

    @property
    def config(self) -> RunConfig:
        """The merged configuration (frozen)."""
        return self._cfg

    @property
    def engine(self) -> Engine:
        """The shared engine (internal; for llmbatch's own tools)."""
        if self._engine is None:
            raise RuntimeError("use the Client inside 'async with' (or await client.start())")
        return self._engine

    # -- lifetime --------------------------------------------------------------------
    async def start(self) -> Client:
        """Open the connection pool (and the embedded mock); ``async with`` calls this."""
        if self._engine is not None:
            return self
        cfg, capped = fit_run_config(self._cfg)
        if capped is not None:
            warnings.warn(ConcurrencyCappedWarning(capped), stacklevel=2)
            self._cfg = cfg
        if cfg.insecure:
            warnings.warn(
                InsecureTLSWarning(
                    "insecure=True: TLS certificates are NOT verified (for tests only); "
                    "to trust a private CA pass ca_bundle=PATH"
                ),
                stacklevel=2,
            )
        prices, budget = _prices_and_budget(cfg, self._budget)
        stack = contextlib.AsyncExitStack()
        try:
            base_url = cfg.provider.base_url
            if cfg.provider.embedded_mock:
                base_url = await stack.enter_async_context(_embedded_mock(cfg.mock))
            elif (notice := ignored_proxy(base_url)) is not None:
                warnings.warn(ProxyIgnoredWarning(notice), stacklevel=2)
            provider = make_provider(cfg.provider, self._api_key, base_url)
            max_in_flight = cfg.max_concurrency if cfg.adaptive else cfg.concurrency
            adapter = make_client(
                cfg.client,
                ClientOptions(
                    max_connections=max_in_flight,
                    timeouts=cfg.timeouts,
                    verify_tls=not cfg.insecure,
                    http2=cfg.http2,
                    ca_bundle=cfg.ca_bundle,
                    tls_up_front=base_url.startswith("https:"),
                ),
            )
            stack.push_async_callback(adapter.aclose)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        secrets = (
            self._api_key,
            *url_secrets(cfg.provider.base_url),
            *header_secrets(cfg.provider.headers),
        )
        self._engine = Engine(
            cfg,
            provider,
            adapter,
            secrets=secrets,
            governor=self._pacer,
            concurrency=self._concurrency,
            prices=prices,
            budget=budget,
        )
        self._engine.loop = asyncio.get_running_loop()
        return self

    async def aclose(self) -> None:
        """Stop batches still running, then close the pool (and the embedded mock)."""
        for batch in list(self._batches):
            await batch.aclose()
        stack, self._stack, self._engine = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Client:
        return await self.start()

    def _count_spent(self, run_dir: Path, usd: float) -> None:
        """A resumed run directory's records already cost ``usd``: max_cost counts it
        (once per directory, however many batches resume it)."""
        budget = self._engine.budget if self._engine is not None else None
        key = run_dir.resolve()
        if budget is None or key in self._counted_dirs:
            return
        self._counted_dirs.add(key)
        if usd > 0:
            budget.add_spent(usd)

    # -- single requests -------------------------------------------------------------
    async def complete(self, prompt: Prompt, *, id: str | None = None) -> Result:
        """Send one prompt and wait for the whole answer.

        A request that fails (after retries) or a prompt that is not valid comes back
        as a Result with ``ok=False``; errors fatal for every request (AuthError,
        QuotaExhausted) are raised.
        """
        rec = _one_record(prompt, id)
        if isinstance(rec, InputError):
            return _input_error_result(rec)
        eng = self.engine
        taken_at = now()
        async with eng.slot():
            reserved = await eng.reserve_cost(rec)  # BudgetExceeded past max_cost
            outcome = await eng.execute(rec, taken_at=taken_at, reserved_usd=reserved)
        return Result.from_line(result_line(outcome))

    def stream(self, prompt: Prompt, *, id: str | None = None) -> AnswerStream:
        """The answer's text deltas as they arrive: ``async for delta in llm.stream(p)``.

        Failures before the first delta are retried as usual. Once text has been
        yielded, a failure is raised (a RequestError subclass) instead of retried,
        because a retry would repeat text the caller already has. An invalid prompt
        raises InputError. Use ``async with llm.stream(p) as s:`` (or ``await
        s.aclose()``) to give the request's concurrency slot and connection back as soon
        as you stop reading; a stream left by ``break`` is cancelled when it is dropped.
        """
        rec = _one_record(prompt, id)
        if isinstance(rec, InputError):
            raise rec
        eng = self.engine
        taken_at = now()

        async def produce(target: TextTarget) -> None:
            async with eng.slot():
                reserved = await eng.reserve_cost(rec)  # BudgetExceeded past max_cost
                await eng.execute(
                    rec,
                    target,
                    taken_at=taken_at,
                    retry_after_text=False,
                    raise_failure=True,
                    reserved_usd=reserved,
                )

        return AnswerStream(produce)

    # -- batches ---------------------------------------------------------------------
    def batch(
        self,
        prompts: Prompts,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        text_files: bool = True,
        text_layout: str = "files",
        keep_partial: bool = False,
        retry_failed: bool = False,
        include_done: bool = False,
        max_runtime_s: float | None = None,
        slo: SLO | None = None,
        progress: bool | Callable[[BatchProgress], None] = False,
        meta: dict[str, Any] | None = None,
        force_resume: bool = False,
        arrivals: ArrivalProfile | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        rerun_changed: bool | Callable[[], Iterable[Any]] = False,
    ) -> Batch:
        """Run many prompts; iterate the returned Batch for Results in completion order.

        Memory stays O(concurrency) however many prompts there are. Without ``run_dir``
        nothing touches the disk. With it, the batch writes a run directory exactly as
        the CLI does (text/<id> streaming, results.jsonl, summary.json, the lock) and
        resumes it: ids already there are skipped (``include_done=True`` yields their
        stored Results first). A directory made by another job (other prompts file,
        base URL, model, ...) is refused with RunDirError unless ``force_resume``.
        ``progress=True`` shows a bar (or log lines when stderr is not a terminal); a
        callable gets a BatchProgress after each record. ``meta`` replaces the identity
        kept in run.json (the CLI's). ``text_layout="log"`` writes every answer into one
        append-only text.log (offsets in each record) instead of a file per request.
        ``arrivals`` sends open loop: each prompt when the profile says it is due (a
        request rate, constant or Poisson/gamma, with a ramp), still at most
        ``concurrency`` in flight; ``batch.pacer`` then holds how late each went.
        ``on_outcome`` sees every finished request's Outcome (llmbatch compare's
        measurements).
        Each record keeps a hash of the request it answered: a prompt that changed under
        a done id is skipped and counted (``Batch.end.changed``), or with
        ``rerun_changed`` its old record is dropped and it runs again (the prompts are
        read twice: a file, a list, or a function that returns them again).
        """
        opts = _BatchOptions(
            text_files=text_files,
            text_layout=text_layout,
            keep_partial=keep_partial,
            retry_failed=retry_failed,
            include_done=include_done,
            max_runtime_s=max_runtime_s,
            slo=slo or SLO(),
            progress=progress,
            meta=meta,
            force_resume=force_resume,
            arrivals=arrivals,
            on_outcome=on_outcome,
            rerun_changed=rerun_changed,
        )
        return Batch(self, prompts, Path(run_dir) if run_dir is not None else None, opts)


def run(
    prompts: Prompts, *, run_dir: str | os.PathLike[str] | None = None, **options: Any
) -> list[Result]:
    """Run ``prompts`` to the end and return their Results in input order (sync).

    ``options`` are the Client's (``provider``, ``model``, ``concurrency``, ...) plus
    ``progress``. Works from plain scripts and from inside a running event loop
    (Jupyter): there it runs on a private loop in a worker thread. With ``run_dir`` a
    re-run resumes, and the Results of ids already done are included.
    """
    progress = options.pop("progress", False)

    async def main() -> list[Result]:
        async with Client(**options) as llm:
            results = [
                r
                async for r in llm.batch(
                    prompts, run_dir=run_dir, include_done=True, progress=progress
                )
            ]
        results.sort(key=lambda r: (r.line is None, r.line or 0))
        return results

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llmbatch-run") as pool:
        return pool.submit(asyncio.run, main()).result()


# -- helpers -----------------------------------------------------------------------------


class AnswerStream(ClosesOnExit):
    """One answer's text deltas, as ``Client.stream`` returns them.

    An async iterator (``async for delta in stream``) and an async context manager, like
    openai's ``AsyncStream`` and httpx's ``stream()``: leaving the block, ``aclose()``,
    cancelling the reading task, or dropping the stream after ``break`` cancels the
    request, which gives its concurrency slot and connection back at once.
    """

    def __init__(self, produce: Callable[[TextTarget], Awaitable[None]]) -> None:
        self._produce = produce
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._finished = False

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        task = self._task
        if task is None:
            # The task must not hold the stream (no cycle): dropping the stream after
            # ``break`` then reaches __del__ at once, not at the next GC.
            task = self._task = asyncio.create_task(_answer(self._produce, self._queue))
        try:
            delta = await self._queue.get()
        except asyncio.CancelledError:
            self._cancel()
            raise
        if delta is None:
            self._finished = True
            await task  # raises the request's error, if any
            raise StopAsyncIteration
        return delta

    def _cancel(self) -> None:
        self._finished = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop reading: cancel the request if it is still streaming."""
        self._cancel()
        task = self._task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, RequestError):
                await task

    def __del__(self) -> None:
        # A stream dropped mid-answer (``break`` out of ``async for``) must not keep its
        # slot until the server finishes: cancelling is synchronous and safe here.
        self._cancel()


async def _answer(
    produce: Callable[[TextTarget], Awaitable[None]], queue: asyncio.Queue[str | None]
) -> None:
    """Run one streamed request into ``queue``; None marks its end."""
    try:
        await produce(_QueueText(queue))
    finally:
        queue.put_nowait(None)


class _QueueText:
    """A TextTarget feeding ``Client.stream``'s queue."""

    __slots__ = ("_put",)

    def __init__(self, queue: asyncio.Queue[str | None]) -> None:
        self._put = queue.put_nowait

    def extend(self, texts: list[str]) -> None:
        for text in texts:  # one item per delta, as stream() promises
            self._put(text)

    def extend_reasoning(self, texts: list[str]) -> None:
        pass  # the stream yields the answer; reasoning stays in the Result's body

    def restart(self) -> None:
        pass  # only attempts that streamed no text are retried (retry_after_text=False)


def _options_config(
    provider: str,
    tables: Mapping[str, Any],
    profile: Mapping[str, Any],
    options: dict[str, Any],
) -> RunConfig:
    """A RunConfig from Client keywords, validated like config.toml (no file, no env)."""
    unknown = set(options) - _CLIENT_OPTIONS
    if unknown:
        raise ConfigError(f"unknown Client option(s): {', '.join(sorted(unknown))}")
    data: dict[str, Any] = {}
    for name, value in tables.items():
        if value is None:
            continue
        if name == "prices":  # a table of tables: {model: ModelPrices or dict}
            if not isinstance(value, Mapping):
                raise ConfigError("option 'prices' must be a dict of {model: ModelPrices or dict}")
            data[name] = {m: _as_table(v, ModelPrices, f"prices[{m!r}]") for m, v in value.items()}
        else:
            data[name] = _as_table(value, _SECTIONS[name], name)
    prof = {k: v for k, v in profile.items() if v is not None and k != "limits"}
    if profile.get("limits") is not None:
        prof["limits"] = _as_table(profile["limits"], Limits, "limits")
    if prof:
        data["providers"] = {provider: prof}
    flags = {"provider": provider, **options}
    return load_config(data=data, flags=flags, environ={}, flag_label=lambda k: f"option {k!r}")


def _as_table(value: Any, cls: type, name: str) -> dict[str, Any]:
    if isinstance(value, cls):
        return dataclasses.asdict(value)  # type: ignore[call-overload, no-any-return]
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"option {name!r} must be a {cls.__name__} or a dict")


def _prices_and_budget(cfg: RunConfig, budget: Spend | None) -> tuple[PriceBook, Spend | None]:
    """The run's prices, with the profile's model looked up now (the price data is read
    once, before anything streams), and the ``max_cost`` budget (ConfigError when the
    model has no price to budget with)."""
    prices = PriceBook(cfg)
    model = cfg.provider.model
    rates = prices.rates(model) if model else None
    if cfg.max_cost is None or budget is not None:
        return prices, budget
    if rates is None:
        raise ConfigError(f"{prices.why_unpriced(model or '?')}: max_cost needs a price")
    return prices, CostBudget(cfg.max_cost)


@contextlib.asynccontextmanager
async def _embedded_mock(settings: MockSettings) -> AsyncIterator[str]:
    """The built-in mock on an ephemeral loopback port, for ``provider="mock"``."""
    from llmbatch.mockserver import MockConfig, start_mock_server
    from llmbatch.notices import quiet_embedded_server

    with quiet_embedded_server():  # its close too: that is when cut-off writes fail
        server = await start_mock_server(
            MockConfig(tokens=settings.tokens, ttft_s=settings.ttft_s, itl_s=settings.itl_s)
        )
        try:
            yield server.url
        finally:
            await server.close()


def _one_record(prompt: Prompt, rid: str | None) -> PromptRecord | InputError:
    item: Any = prompt
    if rid is not None:
        item = {"prompt": prompt, "id": rid} if isinstance(prompt, str) else {**prompt, "id": rid}
    try:
        return parse_item(item, line_no=1, path="<prompt>")
    except InputError as exc:
        return exc


def _input_error_result(err: InputError) -> Result:
    from llmbatch.metrics import request_metrics_dict
    from llmbatch.records import RequestMetrics

    return Result.from_line(
        {
            "id": None,
            "custom_id": "#line-1",
            "response": None,
            "error": {"code": INPUT_ERROR, "message": str(err)},
            "llmbatch": {"line": err.line_no, "metrics": request_metrics_dict(RequestMetrics())},
        }
    )
