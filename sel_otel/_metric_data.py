"""The one walk through the metric data a reader collects (resource, scope, metric, point)."""

from __future__ import annotations

from collections.abc import Iterator

from opentelemetry.sdk.metrics.export import DataPointT, Metric, MetricsData


def metrics(data: MetricsData | None, scope: str | None = None) -> Iterator[Metric]:
    """Every metric in `data` (`None` before anything is recorded); only `scope`'s if given."""
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            if scope is None or scope_metrics.scope.name == scope:
                yield from scope_metrics.metrics


def data_points(
    data: MetricsData | None, name: str, scope: str | None = None
) -> Iterator[DataPointT]:
    """The data points of every metric called `name` in `data`; only `scope`'s if given."""
    for metric in metrics(data, scope):
        if metric.name == name:
            yield from metric.data.data_points
