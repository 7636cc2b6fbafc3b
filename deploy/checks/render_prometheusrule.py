#!/usr/bin/env python3
"""Renders the alert rules as a Prometheus Operator PrometheusRule.

    render_prometheusrule.py [RULES.yml] > deploy/k8s/monitoring/prometheusrule.yaml

deploy/prometheus/rules/falconpay.rules.yml is the source (promtool checks
and tests it); the PrometheusRule carries the same groups. Run this after
changing the rules; scripts/validate-deploy.sh fails while the committed
manifest differs from what this prints.
"""

import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "..", "prometheus", "rules", "falconpay.rules.yml")

HEADER = """\
# Generated from deploy/prometheus/rules/falconpay.rules.yml by
# deploy/checks/render_prometheusrule.py: edit the rules file, then
#
#   python3 deploy/checks/render_prometheusrule.py > deploy/k8s/monitoring/prometheusrule.yaml
#
# The Prometheus Operator loads it into every Prometheus whose
# ruleSelector matches its labels (add e.g. `release: kube-prometheus-stack`
# if yours selects on that).
"""


class Dumper(yaml.SafeDumper):
    """Indents block sequences under their key, as the other manifests do."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _str)


def render(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "falconpay",
            "namespace": "falconpay",
            "labels": {
                "app.kubernetes.io/name": "falcon",
                "app.kubernetes.io/part-of": "falconpay",
            },
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1000)


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else DEFAULT))
