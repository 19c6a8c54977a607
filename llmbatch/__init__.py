"""llmbatch: run large sets of LLM prompts against streaming chat APIs, fast, losing nothing.

The public API is what ``__all__`` lists; every module is internal and may change::

    import llmbatch

    async with llmbatch.Client(provider="openai", model="gpt-4o-mini", concurrency=64) as llm:
        result = await llm.complete("Explain TCP slow start")
        async for text in llm.stream("Write a haiku"):
            print(text, end="")
        async for result in llm.batch("prompts.jsonl", run_dir="outputs/run1"):
            print(result.id, result.ok)

    results = llmbatch.run(["Hi", "Hello"], provider="mock")  # sync, input order
"""

from __future__ import annotations

from llmbatch.batch import Batch, BatchProgress
from llmbatch.client import AnswerStream, Client, Prompt, Prompts, run
from llmbatch.config.model import Limits, MockSettings, ModelPrices, RetryPolicy, Timeouts
from llmbatch.engine import BatchEnd, StopReason
from llmbatch.errors import (
    AnswerTooLarge,
    AuthError,
    BadRequest,
    BudgetExceeded,
    CertificateError,
    ConcurrencyCappedWarning,
    ConfigError,
    ConnectError,
    DeadlineExceeded,
    InputError,
    InsecureTLSWarning,
    LLMBatchError,
    LLMBatchWarning,
    MalformedResponse,
    OutputError,
    ProviderError,
    ProviderOverloaded,
    ProxyIgnoredWarning,
    QuotaExhausted,
    RateLimited,
    ReadTimeout,
    Redirected,
    RejectedInStream,
    RequestError,
    RunDirError,
    ServerError,
    StatusError,
    StreamInterrupted,
    TransportError,
    TruncatedStream,
    UnexpectedContentType,
    UnexpectedError,
    WrongEventLoop,
)
from llmbatch.metrics import SLO
from llmbatch.result import ErrorInfo, Result, Timings, Usage

__version__ = "0.1.0"


__all__ = [
    "AnswerTooLarge",
    "AnswerStream",
    "AuthError",
    "BadRequest",
    "Batch",
    "BatchEnd",
    "BatchProgress",
    "BudgetExceeded",
    "CertificateError",
    "Client",
    "ConcurrencyCappedWarning",
    "ConfigError",
    "ConnectError",
    "DeadlineExceeded",
    "ErrorInfo",
    "InputError",
    "InsecureTLSWarning",
    "LLMBatchError",
    "LLMBatchWarning",
    "Limits",
    "MalformedResponse",
    "MockSettings",
    "ModelPrices",
    "OutputError",
    "Prompt",
    "Prompts",
    "ProviderError",
    "ProviderOverloaded",
    "ProxyIgnoredWarning",
    "QuotaExhausted",
    "RateLimited",
    "ReadTimeout",
    "Redirected",
    "RejectedInStream",
    "RequestError",
    "Result",
    "RetryPolicy",
    "RunDirError",
    "SLO",
    "ServerError",
    "StatusError",
    "StopReason",
    "StreamInterrupted",
    "Timeouts",
    "Timings",
    "TransportError",
    "TruncatedStream",
    "UnexpectedContentType",
    "UnexpectedError",
    "WrongEventLoop",
    "Usage",
    "__version__",
    "run",
]
