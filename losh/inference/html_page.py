"""Self-contained HTML pages (`losh evaluate`'s report, `losh predict`'s predict.html): one file, every picture
embedded as base64, no script and no address outside the file, so that it opens the same anywhere, offline."""
from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: middle; font-size: 13px; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.info { color: #555; font-size: 13px; } .gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figcaption { font-size: 12px; color: #444; max-width: 560px; }
img { display: block; }
"""


class Raw(str):
    """HTML already made (a picture, a link): written as is, not escaped."""


def text(value: object) -> str:
    return value if isinstance(value, Raw) else html.escape("" if value is None else str(value))


def picture(data: bytes, mime: str = "image/jpeg", alt: str = "", width: int | None = None) -> Raw:
    """An <img> holding `data` itself (base64)."""
    size = f' width="{int(width)}"' if width else ""
    encoded = base64.b64encode(data).decode("ascii")
    return Raw(f'<img src="data:{mime};base64,{encoded}" alt="{html.escape(alt)}"{size}>')


def figure(image: Raw, caption: str) -> Raw:
    return Raw(f"<figure>{image}<figcaption>{text(caption)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()) -> Raw:
    """A table; the columns at `numeric` align right."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{text(c)}</td>' if i in numeric else f"<td>{text(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def section(title: str, *parts: str) -> Raw:
    return Raw(f"<h2>{text(title)}</h2>" + "".join(parts))


def paragraph(value: str, cls: str = "info") -> Raw:
    return Raw(f'<p class="{cls}">{text(value)}</p>')


def page(title: str, *parts: str) -> str:
    """The whole document."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{text(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{text(title)}</h1>" + "".join(parts) + "</body></html>\n")
