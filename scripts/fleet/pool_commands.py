"""The pool side of the CLI: `scale`, `rollout`, the pools table, pool readiness for `wait`, and the
`redeploy` refusal on hosts a group launched (scripts/fleet/pools.py talks to AWS)."""

from __future__ import annotations

import sys

from scripts.fleet import errors
from scripts.fleet.config import FleetConfig, Worker
from scripts.fleet.errors import FleetError
from scripts.fleet.pools import Pool, find_pools, pooled_instances, rollout, scale

__all__ = ["cmd_rollout", "cmd_scale", "find_pools", "pool_gaps", "refuse_pooled", "render_pools"]


def render_pools(pools: list[Pool]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="pools")
    for column in ("pool", "role", "min..max", "desired", "in service", "healthy", "template", "instances"):
        table.add_column(column)
    for pool in pools:
        members = "; ".join(f"{i.instance_id} {i.lifecycle} {i.health} v{i.template_version}" for i in pool.instances)
        cells = (
            pool.name,
            pool.role,
            f"{pool.min}..{pool.max}",
            pool.desired,
            pool.in_service,
            pool.healthy,
            f"v{pool.template_version}",
            members or "-",
        )
        table.add_row(*(Text(str(cell)) for cell in cells))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def pool_gaps(config: FleetConfig, pools: list[Pool] | None = None) -> dict[str, list[str]]:
    """pool name -> what keeps it from its desired size, healthy and on its current template."""
    pools = find_pools(config) if pools is None else pools
    if not pools:
        return {"pools": [f"no Auto Scaling group tagged Project={config.project} Stack={config.stack}"]}
    gaps = {}
    for pool in pools:
        missing = []
        if pool.healthy < pool.desired:
            missing.append(f"{pool.healthy}/{pool.desired} healthy in service")
        stale = [i.instance_id for i in pool.instances if i.template_version != pool.template_version]
        if stale:
            missing.append(f"{len(stale)} on an older template (a refresh is due)")
        if missing:
            gaps[f"pool {pool.name}"] = missing
    return gaps


def refuse_pooled(config: FleetConfig, workers: list[Worker]) -> None:
    """In-place deploys would leave a pooled host newer than its launch template, and a replaced
    neighbour older: pooled hosts get releases by `pulumi up` (new template) + refresh only."""
    if config.pooled:
        raise FleetError(
            f"{config.outputs_path} describes worker pools; a pool gets a release by "
            "`pulumi up` (new launch template) and `fleet rollout POOL`, never in place",
            errors.USAGE,
        )
    ids = [w.instance_id for w in workers if w.instance_id]
    if not ids:
        return
    try:
        pooled = pooled_instances(config, ids)
    except FleetError as exc:
        raise FleetError(
            f"cannot check whether the hosts belong to an Auto Scaling group ({exc.message}); "
            "pass --skip-pool-check if they do not"
        ) from None
    if pooled:
        named = ", ".join(f"{w.name} ({pooled[w.instance_id]})" for w in workers if w.instance_id in pooled)
        raise FleetError(
            f"refusing to redeploy in place: {named} belong to an Auto Scaling group, whose "
            "replacements boot from the launch template and would run an older release than their "
            "neighbours; ship with `pulumi up` and `fleet rollout POOL` instead",
            errors.USAGE,
        )


def cmd_scale(config: FleetConfig, args) -> int:
    pool = scale(config, args.pool, args.size)
    print(
        f"{pool.name}: desired {pool.desired} (in service {pool.in_service}, healthy {pool.healthy}); "
        "`fleet wait` follows it",
        flush=True,
    )
    return errors.OK


def cmd_rollout(config: FleetConfig, args) -> int:
    print(rollout(config, args.pool, args.timeout, args.interval), flush=True)
    return errors.OK
