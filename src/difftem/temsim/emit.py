"""A translated TEM-simulator input file as YAML, each config field commented with the key(s) it comes from."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .translate import TemsimInput


def _flow(value) -> str:
    import yaml

    return yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True).strip()[1:-1]


def _emit(data: dict, comments: dict[str, str], path: str, indent: int) -> list[str]:
    lines = []
    pad = " " * indent
    for key, val in data.items():
        p = f"{path}.{key}" if path else key
        note = f"  # {comments[p]}" if p in comments else ""
        if isinstance(val, dict) and val:
            lines.append(f"{pad}{key}:{note}")
            lines += _emit(val, comments, p, indent + 2)
        elif isinstance(val, list) and val and all(isinstance(v, dict) for v in val):
            lines.append(f"{pad}{key}:{note}")
            for i, item in enumerate(val):
                sub = _emit(item, comments, f"{p}[{i}]", indent + 4)
                sub[0] = f"{pad}  - {sub[0].lstrip()}"
                lines += sub
        elif isinstance(val, list) and len(val) > 4 and all(isinstance(v, list) for v in val):
            lines.append(f"{pad}{key}:{note}")
            lines += [f"{pad}  - {_flow(v)}" for v in val]
        else:
            lines.append(f"{pad}{key}: {_flow(val)}{note}")
    return lines


def to_yaml(result: TemsimInput) -> str:
    """The translated config as YAML, each field commented with the TEM-simulator key(s) it comes from."""
    comments: dict[str, list[str]] = {}
    for m in result.mapping:
        text = f"{m.key} = {m.value}"
        if m.field and text not in comments.setdefault(m.field, []):
            comments[m.field].append(text)
    flat = {k: "<- " + ", ".join(v) for k, v in comments.items()}
    head = [f"# difftem config translated from {result.source.name} (TEM-simulator 1.3 input file)",
            "# '<-' comments name the TEM-simulator parameters each field comes from."]
    unmapped = list(dict.fromkeys(f"[{m.section}] {m.key} = {m.value}" for m in result.mapping if m.field is None))
    if result.notes:
        head.append("# notes (approximations, ignored keys):")
        head += [f"#   - {n}" for n in result.notes]
    if unmapped:
        head.append("# parameters with no difftem field (see the notes and docs/tem-simulator.md):")
        head += [f"#   {u}" for u in unmapped]
    return "\n".join(head + _emit(result.data, flat, "", 0)) + "\n"
