"""``/metrics`` families for the HTTP guards: requests refused by the body limits, connections cut."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.server.limits import REFUSED
from edgefleet.server.serving import GuardedHttpTools


class HttpGuardCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily("edgefleet_http_refused", "Requests refused before any route ran "
                                      "(413 body too large, 400 JSON too deep, 408 body too slow, 503 too many "
                                      "bodies held)", labels=["status"])
        for status, count in sorted(REFUSED.items()):
            refused.add_metric([str(status)], count)
        yield refused
        cut = CounterMetricFamily("edgefleet_http_connections_cut", "Connections cut before their headers were "
                                  "complete (timeout: header_timeout_s; too_large: max_header_kb)", labels=["reason"])
        for reason, count in sorted(GuardedHttpTools.cut.items()):
            cut.add_metric([reason], count)
        yield cut
