"""`resdepth models`: the network families and networks, with their parameters and multiply-adds."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from .console import console, print_full_width, warn
from .options import parse_list


def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter of family and network names, e.g. 'preact*' or "
                                                "'resnet1*', or a family path module.path:function.")] = "*",
    num_classes: Annotated[int, typer.Option(help="Classes of the FC layer (10: CIFAR-10, 100: CIFAR-100).")] = 10,
    depths: Annotated[str | None, typer.Option(help="Build each matching family at these depths (comma-separated) "
                                                    "instead of listing its named networks.")] = None,
    widths: Annotated[str | None, typer.Option(help="Build each matching family at these width multipliers "
                                                    "(comma-separated, e.g. 1,2,4) x --depths (or its paper's depths "
                                                    "up to 110): parameters and MFLOPs by depth x width.")] = None,
) -> None:
    """The network families (depth rule, shortcuts, plain twin, paper numbers, protocol, source) and networks
    (name, family, depth, parameters, forward multiply-adds)."""
    from ..models import check_classes
    from ..models.families import describe_family, list_families

    check_classes(num_classes)
    wanted = parse_list(depths, int, "--depths") if depths else None
    wide = parse_list(widths, int, "--widths") if widths is not None else None
    found = list_families(pattern)
    warn(f for f in found if isinstance(f, str))
    families = [f for f in found if not isinstance(f, str)]
    rows, skipped = network_rows(pattern, families, wanted, num_classes, wide)
    if not families and not rows:
        raise UserError(f"no network or family matches {pattern!r}: try 'resnet*', 'preact*' or leave the pattern "
                        "out for all")
    if (wanted or wide) and not rows and skipped:  # nothing was built: each family says why
        raise UserError("; ".join(skipped))
    if families:
        described = [describe_family(f) for f in families]
        print_full_width(render_families(described))
        for row in described:  # one line each: a pipe gets them whole
            console.print(f"{row['family']}: {escape(row['summary'])}\n  protocol: {escape(row['protocol'])}\n"
                          f"  source: {escape(row['source'])}", highlight=False, soft_wrap=True)
    if rows:
        print_full_width(render_networks(rows, num_classes))
    for line in skipped:
        console.print(f"[dim]{escape(line)}[/]", highlight=False)


def network_rows(pattern: str, families: list[Any], depths: list[int] | None, num_classes: int,
                 widths: list[int] | None = None) -> tuple[list[dict[str, object]], list[str]]:
    """The named networks matching the pattern, or each family at --depths (user families without named networks:
    at example depths) and --widths; and a line for each depth a family's rule does not allow (or family without
    a width option)."""
    from ..models import count_network, describe_models

    rows = describe_models(pattern, num_classes) if depths is None and widths is None else []
    built = families if depths is not None or widths is not None else [f for f in families if not f.builtin]
    skipped = []
    for family in built:
        if widths is not None and not family.net_option("width"):
            skipped.append(f"{family.name}: takes no width option")
            continue
        for depth in depths or widths_depths(family, widths):
            if not family.depths.allows(depth):
                nearest = " or ".join(map(str, family.depths.nearest(depth)))
                skipped.append(f"{family.name}: no {depth}-layer net (depths {family.depths}: try {nearest})")
                continue
            for width in widths or [None]:
                params, multiply_adds = count_network(family.name, depth, num_classes,
                                                      net_options=None if width is None else {"width": width})
                rows.append({"name": f"{family.name}-{depth}" + ("" if width is None else f"-w{width}"),
                             "kind": family.name,
                             "depth": depth, "width": width, "params": params, "mflops": multiply_adds / 1e6})
    return rows, skipped


def widths_depths(family: Any, widths: list[int] | None) -> list[int]:
    """The depths a family is built at without --depths: its example depths; with --widths, those up to 110 (a
    1202-layer net at width 4 has 300M parameters), else its shallowest."""
    from ..models.families import example_depths

    examples = example_depths(family)
    return examples if not widths else [d for d in examples if d <= 110] or examples[:1]


def render_families(rows: list[dict[str, str]]) -> Table:
    """Families as a table; what each is, its protocol (where its paper differs from §4.2: `--warmup auto` follows
    it) and its source follow it as lines."""
    table = Table(title="network families", box=box.SIMPLE_HEAD)
    columns = ("family", "depths", "shortcuts", "options", "plain twin", "paper numbers")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def render_networks(rows: list[dict[str, object]], num_classes: int) -> Table:
    table = Table(title=f"resdepth networks ({num_classes} classes)")
    wide = any(row.get("width") for row in rows)  # --widths: a column of width multipliers
    for column in ("name", "family", "depth", *(["width"] if wide else []), "params", "MFLOPs (mult-adds)"):
        table.add_column(column, justify="right" if column not in ("name", "family") else "left")
    for row in rows:
        width = [str(row.get("width") or 1)] if wide else []
        table.add_row(str(row["name"]), str(row["kind"]), str(row["depth"]), *width, f"{row['params']:,}",
                      f"{row['mflops']:.1f}")
    return table
