"""What ``prune`` and ``apply`` hand back: the tables or one JSON object on stdout, and the ``--report`` file.

Everything that can make the report fail (an unknown extension, stdout asked
for twice) is refused by :func:`check_report_target` before any work, so a
run never stops after the model was written. A report bound for stdout
(``-``, ``/dev/stdout``) goes through the open stream, one for another
special file (a pipe, ``/dev/null``) is written there directly: renaming
into place is for regular files only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import EXIT_BELOW_FLOOR, InvalidArgumentError

REPORT_KINDS = {".md": "markdown", ".json": "json", ".html": "html"}


def _special(path: str) -> bool:
    """stdout (``-``), a device (``/dev/stdout``, whatever it points to) or another non-regular file (a FIFO)."""
    p = Path(path)
    return path == "-" or p.absolute().parts[:2] == ("/", "dev") or (p.exists() and not p.is_file())


def report_kind(path: str) -> str:
    """markdown, json or html by the extension; stdout and special files without a known one get Markdown."""
    kind = REPORT_KINDS.get(Path(path).suffix.lower())
    if kind is None and not _special(path):
        raise InvalidArgumentError(f"--report {path}: give a .md, .json or .html file (or - for stdout)")
    return kind or "markdown"


def check_report_target(args) -> None:
    """Refuse, before any work, a --report the run could not write."""
    path = getattr(args, "report", None)
    if not path:
        return
    report_kind(path)
    if path == "-" and getattr(args, "json", False):
        raise InvalidArgumentError("--report - and --json both write to stdout: give --report a file")
    if _special(path):
        return
    from ..graph.io import check_output_path
    check_output_path(path, args.model, getattr(args, "calib", None), getattr(args, "scores", None))


def report_text(report, kind: str, title: str) -> str:
    """The one report as JSON, Markdown or a self-contained HTML page (with its plots)."""
    if kind == "json":
        return json.dumps(report.to_dict(), indent=2, default=str) + "\n"
    if kind == "html":
        return report.html(title)
    return report.markdown(title)


def write_report(report, path: Optional[str], title: str, args=None) -> None:
    """The report in the format its path names: atomically for a file, directly for stdout or a special file."""
    if not path:
        return
    if args is not None and report.provenance is None:
        from ..report import Provenance
        report.provenance = Provenance.of_command(getattr(args, "argv", None), getattr(args, "calib", None))
    text = report_text(report, report_kind(path), title)
    stream = {"-": sys.stdout, "/dev/stdout": sys.stdout, "/dev/stderr": sys.stderr}.get(path)
    if stream is not None:  # through the open stream: reopening a redirected stdout would write over it
        stream.write(text)
        stream.flush()
    elif _special(path):
        with open(path, "w") as f:
            f.write(text)
    else:
        from ..graph.io import write_text_atomic
        write_text_atomic(path, text)


def summary(res, exit_code: int = 0) -> dict[str, Any]:
    """The ``--json`` object: where the model went, MACs/params/size before and after, fidelity as reported."""
    rep = res.report
    b, a = rep.before, rep.after
    out: dict[str, Any] = {
        "output": str(res.output_path) if res.output_path else None, "exit_code": exit_code,
        "macs": {"before": b.macs, "after": a.macs}, "params": {"before": b.params, "after": a.params},
        "size_bytes": {"before": b.size_bytes, "after": a.size_bytes},
        "pruned_kernels": rep.removed_kernels, "prunable_kernels": rep.prunable_kernels,
    }
    if b.latency_ms is not None and a.latency_ms is not None:
        out["latency_ms"] = {"before": b.latency_ms, "after": a.latency_ms}
    if b.accuracy is not None and a.accuracy is not None:
        out["accuracy"] = {"before": b.accuracy, "after": a.accuracy}
    if a.fidelity:
        out["fidelity"] = a.fidelity.to_dict() if hasattr(a.fidelity, "to_dict") else a.fidelity
    out.update({k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in rep.extra.items() if "fidelity" in k})
    return out


def emit_result(res, args) -> int:
    """Plan, report, then stdout: the tables and the written path, or the --json summary alone."""
    if getattr(args, "save_plan", None):
        res.plan.save(args.save_plan)
    report = getattr(args, "report", None)
    write_report(res.report, report, f"onnxprune: {Path(args.model).name} -> {Path(args.output).name}", args)
    if getattr(args, "json", False):
        print(json.dumps(summary(res), default=str))
        return 0
    if report != "-":
        print(res.report.table())
    print(f"wrote {res.output_path}", file=sys.stderr if report == "-" else sys.stdout)
    return 0


def emit_refused(res, args, message: str) -> None:
    """A run below the fidelity floor: its report (file and tables, or the --json summary), no model."""
    if res is None:
        if getattr(args, "json", False):
            print(error_json(message, EXIT_BELOW_FLOOR))
        return
    report = getattr(args, "report", None)
    write_report(res.report, report, f"onnxprune: {Path(args.model).name} (refused: below the fidelity floor)",
                 args)
    if getattr(args, "json", False):
        print(json.dumps({**summary(res, EXIT_BELOW_FLOOR), "error": message}, default=str))
    elif report != "-":
        print(res.report.table())


def error_json(message: str, exit_code: int) -> str:
    """The --json object of a run that failed: the same one line as on stderr, and the exit code."""
    return json.dumps({"output": None, "exit_code": exit_code, "error": message})
