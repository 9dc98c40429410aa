"""Flavors, pools and nodes: what a deploy can ask for and where it can run."""

from __future__ import annotations

import typer
from rich.table import Table

from opsbot.cli.base import JSON_OPT, app, client, core
from opsbot.cli.output import document, err, out, print_json, reports_errors


@app.command()
@reports_errors
def flavors(
    pool: str = typer.Option("public", help="Resource pool to check the flavors against."),
    as_json: bool = JSON_OPT,
) -> None:
    """List the flavors (specifications), marking those no node can host, with the reason."""
    statuses = core().flavor_statuses(pool)
    if as_json:
        print_json([s.as_dict() for s in statuses])
        return
    table = Table("id", "specification", "models", "available")
    for s in statuses:
        table.add_row(
            s.flavor.id,
            s.flavor.name,
            ", ".join(s.flavor.allows),
            "yes" if s.available else f"no: {s.reason}",
            style=None if s.available else "dim",
        )
    out.print(table)


@app.command()
@reports_errors
def nodes(as_json: bool = JSON_OPT) -> None:
    """Each resource pool with its nodes: state, address, CPUs, memory, accelerators, what is
    free; and node pool labels that no pool names."""
    report = client().nodes()
    if as_json:
        print_json(document(report))
        return
    for pool in report.pools:
        out.print(f"pool {pool.name} ({pool.kind}): {pool.summary}", markup=False)
        table = Table("node", "state", "address", "labels", "has", "free")
        for n in pool.nodes:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
            table.add_row(
                n.name,
                n.state,
                n.addr or "-",
                labels,
                n.capacity_text,
                n.free_text or "-",
                style=None if n.state == "ready" else "dim",
            )
        out.print(table if pool.nodes else "  no nodes")
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False)
