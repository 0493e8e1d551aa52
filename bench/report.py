"""Write one benchmark's section of docs/BENCHMARKS.md, between its markers.

Each benchmark renders its section including `<!-- NAME:start -->` and
`<!-- NAME:end -->`; a section that is not there yet is appended, and the rest of the
file is left as it is.
"""

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nMeasured on this project's 2-core CI-class machine unless noted. "
          "Ratios and percentiles come from one run each.\n")


def write_section(name: str, rendered: str, doc: Path = DOC) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else HEADER
    if start in text and end in text:
        text = text[:text.index(start)] + rendered + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + rendered + "\n"
    doc.write_text(text)
