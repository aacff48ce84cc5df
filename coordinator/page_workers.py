"""The sidebar's worker cards (page only). A worker's own words (runtime, service, version,
operations, error) are shown with st.text: no Markdown, no HTML, so a worker cannot put a link,
an image or styling on the page (issue 11.12); only our status line is Markdown, with the
runtime cut to safe characters."""

from __future__ import annotations

import streamlit as st

from coordinator import worker_metrics
from coordinator.page_chart import worker_host
from coordinator.page_text import connection_note, safe_name


def worker_card(status, figures: str = "", tls=None) -> None:
    """One worker; how it is reached (connection_note), its own words (runtime, service,
    version, ops, error) and its /metrics figures (worker_metrics.line), as plain text only."""
    where = f"{worker_host(status.url)}\n{connection_note(status.url, status.ok, tls)}"
    with st.container(border=True):
        if status.ok:
            st.markdown(f":green[:material/check_circle:] **{safe_name(status.runtime or status.service)}**")
            st.text(
                f"{where}\n{status.service or '?'} {status.version or ''} · "
                f"{status.latency_ms:,.0f} ms · primary {status.primary or '?'}\n"
                f"ops: {', '.join(status.operations) or 'none'}"
            )
            if figures:
                st.text(figures)
        else:
            st.markdown(":red[:material/error:] **Not available**")
            st.text(f"{where}\n{status.error or 'no answer'}")


def draw_workers(box, config, statuses: list) -> None:
    """The cards into `box` (an st.empty), replacing what it showed."""
    with box.container():
        count = (
            f"{len(statuses)} found in the stack's pools" if config.pool_fleet else f"{len(config.workers)} configured"
        )
        st.text(f"{count}, from {config.source}")
        healthy = [status.url for status in statuses if status.ok]
        fetched = worker_metrics.fetch_all(healthy, config.health_timeout, config.tls)
        figures = {one.url: worker_metrics.line(one) for one in fetched}
        for status in statuses:
            worker_card(status, figures.get(status.url, ""), config.tls)
        if not any(status.ok for status in statuses):
            st.caption(":material/cloud_off: None reachable: see the note on the page.")
