"""What every smsstream dashboard shares: variables, selectors, and panels described as data.

A panel is a :class:`PanelSpec` (title, what to do when it looks wrong, unit,
queries); :func:`build_dashboard` turns a list of rows of them into a
grafana-foundation-sdk dashboard with a ``$datasource`` variable, ``$job`` and
``$instance`` variables, stable panel ids and a ``refId`` on every query. The
test that runs every query against a real Prometheus reads the same specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat as gs
from grafana_foundation_sdk.builders import timeseries as gt
from grafana_foundation_sdk.builders.common import StackingConfig, VizLegendOptions
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync, DashboardLinkType, DataSourceRef, VariableOption, VariableRefresh, VariableSort,
)

from smsstream.monitoring import names

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["smsstream"]
#: Grafana's built-in range variables; the Prometheus test substitutes them.
RATE_WINDOW = "$__rate_interval"
STEP_WINDOW = "$__interval"


def selector(**labels: str) -> str:
    """``{job=~"$job", instance=~"$instance", ...}``; a value starting with ``~`` or ``!`` is a regex / negation."""
    matchers = ['job=~"$job"', 'instance=~"$instance"']
    for name, value in labels.items():
        if value.startswith("~"):
            matchers.append(f'{name}=~"{value[1:]}"')
        elif value.startswith("!"):
            matchers.append(f'{name}!="{value[1:]}"')
        else:
            matchers.append(f'{name}="{value}"')
    return "{" + ", ".join(matchers) + "}"


def series(metric: str, **labels: str) -> str:
    return metric + selector(**labels)


def rate(metric: str, by: str = "", window: str = RATE_WINDOW, **labels: str) -> str:
    """Per-second rate summed over workers, ``by`` the given labels (comma-separated)."""
    return f"sum by ({by}) (rate({series(metric, **labels)}[{window}]))" if by else \
        f"sum(rate({series(metric, **labels)}[{window}]))"


def increase(metric: str, by: str = "", **labels: str) -> str:
    """How much a counter grew in each step of the graph, summed over workers."""
    inner = f"increase({series(metric, **labels)}[{STEP_WINDOW}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def top(k_by: str, expr: str, label: str = names.SENDER) -> str:
    """``expr`` for the ``TOP_K`` values of ``label`` largest in ``k_by`` (bounded, whatever the label count)."""
    return f"({expr}) and on ({label}) topk({names.TOP_K}, {k_by})"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    #: what the panel shows and what to do when it looks wrong
    description: str
    unit: str
    queries: tuple[Query, ...]
    style: str = "line"  # "line", "bars", "stacked" or "stat"
    width: int = 12
    minimum: float | None = 0


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[RowSpec, ...]
    tags: list[str] = field(default_factory=lambda: list(TAGS))

    def panels(self) -> list[PanelSpec]:
        return [p for row in self.rows for p in row.panels]


def ref_id(i: int) -> str:
    return chr(ord("A") + i)


def _panel(spec: PanelSpec, panel_id: int):
    builder = gs.Panel() if spec.style == "stat" else gt.Panel()
    builder = (builder.id(panel_id).title(spec.title).description(spec.description).unit(spec.unit)
               .datasource(DATASOURCE).span(spec.width).height(8))
    if spec.minimum is not None:
        builder = builder.min(spec.minimum)
    for i, q in enumerate(spec.queries):
        builder = builder.with_target(
            gp.Dataquery().ref_id(ref_id(i)).datasource(DATASOURCE).expr(q.expr).legend_format(q.legend))
    if spec.style == "stat":
        return builder.height(4).graph_mode(common.BigValueGraphMode.AREA)
    builder = builder.legend(VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                             .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
    if spec.style == "bars":
        builder = builder.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if spec.style in ("bars", "stacked"):
        builder = builder.stacking(StackingConfig().mode(common.StackingMode.NORMAL))
    if spec.style == "stacked":
        builder = builder.fill_opacity(30)
    return builder


def _variables() -> list:
    job_all = VariableOption(selected=True, text="All", value="$__all")
    return [
        gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        .description("The Prometheus that scrapes the smsstream workers."),
        gd.QueryVariable("job").label("job").datasource(DATASOURCE)
        .query(f"label_values({names.EVENTS_IN}, job)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*").current(job_all)
        .description(f"Scrape job of the workers ({names.WORKER_JOB} with the Helm chart)."),
        gd.QueryVariable("instance").label("worker").datasource(DATASOURCE)
        .query(f'label_values({names.EVENTS_IN}{{job=~"$job"}}, instance)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*").current(job_all)
        .description("One worker (scrape target), or all of them."),
    ]


def build_dashboard(spec: DashboardSpec):
    """The grafana-foundation-sdk dashboard for ``spec``: rows in order, panels numbered from 1."""
    builder = (
        gd.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags(spec.tags)
        .time("now-6h", "now").refresh("30s").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
        .editable().variables(_variables())
        .link(gd.DashboardLink("smsstream dashboards").type(DashboardLinkType.DASHBOARDS).tags(TAGS)
              .as_dropdown(True).include_vars(True).keep_time(True))
    )
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        builder = builder.with_row(gd.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            builder = builder.with_panel(_panel(panel, panel_id))
    return builder
