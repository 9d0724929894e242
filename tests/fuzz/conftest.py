"""The bad-input sweep (issue 8): hypothesis profile, byte/text mutations, a hang watchdog and case counts.

Profiles
--------
``KERAS_ASTRO_FUZZ`` unset (or ``default``): every property test tries ``FUZZ_DEFAULT_EXAMPLES`` cases
(about 30; tests that stream through TensorFlow try fewer), derandomized, so CI is deterministic
and the whole sweep stays under a minute on 2 cores. ``KERAS_ASTRO_FUZZ=thorough``: many more cases
with a fresh random seed each run (``KERAS_ASTRO_FUZZ_EXAMPLES`` overrides the count in either mode).

The profile is registered under the name ``keras_astro_fuzz``; test modules apply it with
``@settings(settings.get_profile("keras_astro_fuzz"))`` so other tests of the suite keep hypothesis'
defaults.

Report
------
Every case is recorded per target (the loader or function under test) with its outcome: ``ok``
(identical to the undamaged input), ``ok, changed`` (accepted by a format that cannot detect the
change, e.g. a digit edited in a CSV, and the result passed the loader's own validation), or the
exception class that came out. The table is printed at the end of the pytest run and written as
JSON to ``$KERAS_ASTRO_FUZZ_REPORT`` if set, otherwise to ``<pytest basetemp>/fuzz_report.json``.

Hangs and crashes
-----------------
Every call under test runs under a SIGALRM watchdog (``FUZZ_CASE_TIMEOUT_S``, default 30 s) that
raises :class:`LoaderHang` (a ``BaseException``, so no ``except Exception`` in a loader can swallow
it) and a ``faulthandler`` hard stop at three times that, which dumps every thread and ends the
process if a C library (libhdf5, cfitsio-free astropy, libpng) never returns. An interpreter crash
cannot be caught in-process; pytest's faulthandler prints its traceback and the run fails.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE = "keras_astro_fuzz"
MODE = os.environ.get("KERAS_ASTRO_FUZZ", "default").strip().lower() or "default"
if MODE not in ("default", "thorough"):
    raise pytest.UsageError(f"KERAS_ASTRO_FUZZ must be 'default' or 'thorough', got {MODE!r}")
FUZZ_DEFAULT_EXAMPLES = 30
FUZZ_THOROUGH_EXAMPLES = 500
MAX_EXAMPLES = int(
    os.environ.get("KERAS_ASTRO_FUZZ_EXAMPLES", FUZZ_THOROUGH_EXAMPLES if MODE == "thorough" else FUZZ_DEFAULT_EXAMPLES)
)
CASE_TIMEOUT_S = float(os.environ.get("FUZZ_CASE_TIMEOUT_S", "30"))

settings.register_profile(
    PROFILE,
    max_examples=MAX_EXAMPLES,
    derandomize=MODE != "thorough",
    database=None,  # no .hypothesis folder; the derandomized default run needs none
    deadline=None,  # wall-clock limits come from the watchdog below, not from timing jitter
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)


class LoaderHang(BaseException):
    """A call under test did not return within the watchdog's time (BaseException on purpose)."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`LoaderHang` after ``seconds`` of wall time; hard-stop the process after 3×."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
        raise LoaderHang(f"{what}: no answer after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------------------------
# case counts


@dataclass
class FuzzLog:
    """Outcome counts per target, printed and written as JSON at the end of the run."""

    cases: dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    seconds: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    report_dir: Path | None = None

    def record(self, target: str, outcome: str, seconds: float = 0.0) -> None:
        self.cases[target][outcome] += 1
        self.seconds[target] += seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": MODE,
            "max_examples": MAX_EXAMPLES,
            "derandomized": MODE != "thorough",
            "case_timeout_s": CASE_TIMEOUT_S,
            "targets": {
                t: {"cases": sum(c.values()), "outcomes": dict(sorted(c.items())), "seconds": round(self.seconds[t], 3)}
                for t, c in sorted(self.cases.items())
            },
            "total_cases": sum(sum(c.values()) for c in self.cases.values()),
        }


LOG = FuzzLog()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - pytest hook
    if not LOG.cases:
        return
    report = LOG.as_dict()
    tr = terminalreporter
    tr.write_sep("=", f"bad-input sweep: {report['total_cases']} cases (profile {MODE}, max {MAX_EXAMPLES}/test)")
    width = max(len(t) for t in report["targets"]) + 2
    tr.write_line(f"{'target':<{width}}{'cases':>6}  outcomes")
    for target, row in report["targets"].items():
        outcomes = ", ".join(f"{k} {v}" for k, v in row["outcomes"].items())
        tr.write_line(f"{target:<{width}}{row['cases']:>6}  {outcomes}")
    dest = os.environ.get("KERAS_ASTRO_FUZZ_REPORT")
    path = Path(dest) if dest else (LOG.report_dir / "fuzz_report.json" if LOG.report_dir else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        tr.write_line(f"fuzz report: {path}")


# ----------------------------------------------------------------------------------------------
# mutations

#: Replacement tokens for one field of a text (CSV/JSON) file.
BAD_TOKENS = (
    "",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e999",
    "-1",
    "0",
    "99999999999999999999999",
    "abc",
    "1.2.3",
    '"',
    "null",
    "[]",
    "{}",
    "\u00e9",
    "\ud7ff",
    " ",
)


@dataclass(frozen=True)
class Mutation:
    """What was done to the bytes of a file (for messages and the report)."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})"


def mutate_bytes(data: st.DataObject, raw: bytes) -> tuple[bytes, Mutation]:
    """Truncate, overwrite, zero, insert, delete or append bytes of ``raw`` (drawn by hypothesis)."""
    n = len(raw)
    kind = data.draw(
        st.sampled_from(["truncate", "overwrite", "bitflip", "zero_run", "insert", "delete", "append"]), label="kind"
    )
    b = bytearray(raw)
    if kind == "truncate":
        cut = data.draw(st.integers(0, n - 1), label="cut")
        return bytes(b[:cut]), Mutation(kind, f"kept {cut} of {n} bytes")
    if kind in ("overwrite", "bitflip"):
        k = data.draw(st.integers(1, 8), label="count")
        where = []
        for _ in range(k):
            i = data.draw(st.integers(0, n - 1), label="pos")
            if kind == "overwrite":
                v = data.draw(st.integers(0, 255).filter(lambda v, i=i: v != b[i]), label="value")
            else:
                v = b[i] ^ (1 << data.draw(st.integers(0, 7), label="bit"))
            b[i] = v
            where.append(i)
        return bytes(b), Mutation(kind, f"bytes at {sorted(where)[:8]}")
    if kind == "zero_run":
        i = data.draw(st.integers(0, n - 1), label="pos")
        m = data.draw(st.integers(1, 256), label="len")
        b[i : i + m] = bytes(len(b[i : i + m]))
        return bytes(b), Mutation(kind, f"{m} bytes from {i}")
    if kind == "insert":
        i = data.draw(st.integers(0, n), label="pos")
        extra = data.draw(st.binary(min_size=1, max_size=32), label="bytes")
        return bytes(b[:i] + extra + b[i:]), Mutation(kind, f"{len(extra)} bytes at {i}")
    if kind == "delete":
        i = data.draw(st.integers(0, n - 1), label="pos")
        m = data.draw(st.integers(1, 64), label="len")
        return bytes(b[:i] + b[i + m :]), Mutation(kind, f"{m} bytes from {i}")
    extra = data.draw(st.binary(min_size=1, max_size=64), label="bytes")
    return bytes(b) + extra, Mutation(kind, f"{len(extra)} bytes")


def mutate_text(data: st.DataObject, raw: bytes, *, sep: str = ",") -> tuple[bytes, Mutation]:
    """Field-aware damage of a text table: a bad token in one field, a field or line dropped or
    added, undecodable bytes, CRLF/BOM; or any byte mutation."""
    kind = data.draw(
        st.sampled_from(["field", "field", "drop_field", "extra_field", "drop_line", "dup_line", "latin1", "bytes"]),
        label="text kind",
    )
    if kind == "bytes":
        return mutate_bytes(data, raw)
    text = raw.decode("utf-8")
    lines = text.split("\n")
    body = [i for i, ln in enumerate(lines) if ln.strip()]
    i = data.draw(st.sampled_from(body), label="line")
    fields = lines[i].split(sep)
    j = data.draw(st.integers(0, len(fields) - 1), label="field")
    if kind == "field":
        tok = data.draw(st.sampled_from(BAD_TOKENS), label="token")
        fields[j] = tok
        lines[i] = sep.join(fields)
        detail = f"line {i + 1} field {j + 1} -> {tok!r}"
    elif kind == "drop_field":
        del fields[j]
        lines[i] = sep.join(fields)
        detail = f"line {i + 1} lost field {j + 1}"
    elif kind == "extra_field":
        fields.insert(j, data.draw(st.sampled_from(BAD_TOKENS), label="token"))
        lines[i] = sep.join(fields)
        detail = f"line {i + 1} gained a field at {j + 1}"
    elif kind == "drop_line":
        del lines[i]
        detail = f"line {i + 1} removed"
    elif kind == "dup_line":
        lines.insert(i, lines[i])
        detail = f"line {i + 1} repeated"
    else:
        out = "\n".join(lines).encode("utf-8")
        pos = data.draw(st.integers(0, len(out) - 1), label="pos")
        bad = data.draw(st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\x00", b"\xef\xbb\xbf"]), label="bytes")
        return out[:pos] + bad + out[pos:], Mutation("bad_encoding", f"{bad!r} at byte {pos}")
    return "\n".join(lines).encode("utf-8", errors="surrogatepass"), Mutation(kind, detail)


# ----------------------------------------------------------------------------------------------
# the oracle


def _documented_name(exc: BaseException, allowed: tuple[type[BaseException], ...]) -> str:
    """The allowed (documented) class an exception matched; a private subclass is not named."""
    base = next(a for a in allowed if isinstance(exc, a))
    cls = type(exc)
    if cls is base or cls.__name__.startswith("_"):
        return base.__name__
    return f"{base.__name__} ({cls.__name__})"


def raised_by_package(exc: BaseException) -> bool:
    """True if the innermost frame that raised ``exc`` is keras_astro code (not numpy, astropy...)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and f"{os.sep}keras_astro{os.sep}" in last.tb_frame.f_code.co_filename


class Fuzz:
    """Helpers handed to the tests through the ``fuzz`` fixture (tests cannot import conftest)."""

    PROFILE = PROFILE
    MAX_EXAMPLES = MAX_EXAMPLES
    mutate_bytes = staticmethod(mutate_bytes)
    mutate_text = staticmethod(mutate_text)
    time_limit = staticmethod(time_limit)
    raised_by_package = staticmethod(raised_by_package)
    LoaderHang = LoaderHang

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._n = 0
        self._last: Path | None = None

    def case_dir(self) -> Path:
        """A fresh, empty folder for one case (the previous case's folder is removed)."""
        if self._last is not None:
            shutil.rmtree(self._last, ignore_errors=True)
        self._n += 1
        self._last = self.workdir / f"case-{self._n:06d}"
        self._last.mkdir(parents=True)
        return self._last

    def case_path(self, name: str, content: bytes) -> Path:
        """Write ``content`` as ``<fresh folder>/<name>`` (the seed's file name, so messages can name it)."""
        p = self.case_dir() / name
        p.write_bytes(content)
        return p

    def record(self, target: str, outcome: str, seconds: float = 0.0) -> None:
        LOG.record(target, outcome, seconds)

    def check(
        self,
        target: str,
        call: Callable[[], Any],
        *,
        allowed: tuple[type[BaseException], ...],
        names: str | Path | None,
        case: Any,
        same: Callable[[Any], bool] | None = None,
        changed_ok: Callable[[Any], None] | None = None,
        message_check: Callable[[BaseException], bool] | None = None,
        changed_label: str = "ok, changed",
    ) -> str:
        """Run ``call`` under the watchdog and judge what comes out.

        Parameters
        ----------
        allowed : the documented exception types.
        names : the file the message must name (its base name), or None for non-file inputs.
        same : for a successful call, True when the result equals the undamaged input's.
        changed_ok : for formats that cannot detect some changes (CSV, JSON; FITS checksums that
            cancel): a validator of a different result (raises AssertionError if the result breaks
            the loader's promises or the change was detectable). Without it a changed result is a
            silent corruption and fails the test.
        changed_label : how an accepted changed result is counted in the report.
        message_check : extra test on an allowed exception (e.g. tf errors must carry StoreError).
        """
        t0 = time.perf_counter()
        try:
            with time_limit(CASE_TIMEOUT_S, f"{target} on {case}"):
                out = call()
        except LoaderHang:
            self.record(target, "HANG", time.perf_counter() - t0)
            raise
        except allowed as exc:
            dt = time.perf_counter() - t0
            msg = str(exc)
            problems = []
            if len(msg.strip()) < 10:
                problems.append("the message is empty or too short to say what is wrong")
            if names is not None and Path(names).name not in msg:
                problems.append(f"the message does not name the file {Path(names).name!r}")
            if message_check is not None and not message_check(exc):
                problems.append("the message does not carry the documented error")
            if problems:
                self.record(target, f"BAD MESSAGE {type(exc).__name__}", dt)
                raise AssertionError(
                    f"{target}: {type(exc).__name__} for {case}, but {'; '.join(problems)}: {msg[:500]!r}"
                ) from exc
            name = _documented_name(exc, allowed)
            self.record(target, name, dt)
            return name
        except BaseException as exc:
            self.record(target, f"UNEXPECTED {type(exc).__name__}", time.perf_counter() - t0)
            raise AssertionError(
                f"{target}: undocumented {type(exc).__module__}.{type(exc).__name__} for {case}: {str(exc)[:800]}"
            ) from exc
        dt = time.perf_counter() - t0
        if same is not None and same(out):
            self.record(target, "ok", dt)
            return "ok"
        if changed_ok is None:
            self.record(target, "SILENTLY CHANGED", dt)
            raise AssertionError(f"{target}: {case} was read without an error but gives a different result")
        try:
            changed_ok(out)
        except AssertionError:
            self.record(target, "INVALID RESULT", dt)
            raise
        label = changed_label if same is not None else "ok"
        self.record(target, label, dt)
        return label


@pytest.fixture(scope="session")
def fuzz(tmp_path_factory) -> Fuzz:
    LOG.report_dir = tmp_path_factory.getbasetemp()
    return Fuzz(tmp_path_factory.mktemp("fuzz-cases"))


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "fuzz: the bad-input sweep of issue 8 (tests/fuzz)")
