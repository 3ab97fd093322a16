#!/usr/bin/env python3
"""Writes the Prometheus Operator's copy of alerts.yml:
deploy/k8s/components/prometheus-operator/prometheusrule.yaml, a
PrometheusRule `edgelink` whose spec.groups are alerts.yml's groups.

    python3 deploy/observability/prometheus/prometheusrule.py           # write it
    python3 deploy/observability/prometheus/prometheusrule.py --check   # CI: exit 1 if stale

Needs PyYAML (Debian: python3-yaml).
"""

import argparse
import difflib
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SOURCE = os.path.join(HERE, "alerts.yml")
TARGET = os.path.join(ROOT, "deploy", "k8s", "components", "prometheus-operator", "prometheusrule.yaml")

HEADER = """\
# Generated from deploy/observability/prometheus/alerts.yml by
# deploy/observability/prometheus/prometheusrule.py: do not edit, edit
# alerts.yml and run the script (CI runs it with --check).
#
# The Prometheus Operator loads it when its Prometheus' ruleSelector matches
# these labels (kube-prometheus-stack selects `release: <its release>` by
# default: add that label in your overlay, or set ruleSelector to {}).
"""


class Dumper(yaml.SafeDumper):
    """Block style, multi-line strings (PromQL) as literal blocks."""


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _str)


def render():
    with open(SOURCE) as f:
        groups = yaml.safe_load(f)["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "edgelink",
            "labels": {
                "app.kubernetes.io/name": "edgelink",
                "app.kubernetes.io/component": "alert-rules",
            },
        },
        "spec": {"groups": groups},
    }
    body = yaml.dump(rule, Dumper=Dumper, sort_keys=False, width=1 << 16, allow_unicode=True)
    return HEADER + body


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args()
    text = render()
    if args.check:
        try:
            with open(TARGET) as f:
                committed = f.read()
        except FileNotFoundError:
            committed = ""
        if committed != text:
            sys.stdout.writelines(
                difflib.unified_diff(
                    committed.splitlines(True), text.splitlines(True),
                    os.path.relpath(TARGET, ROOT) + " (committed)", "(from alerts.yml)",
                )
            )
            print(f"\n{os.path.relpath(TARGET, ROOT)} is stale: run {os.path.relpath(__file__, ROOT)}",
                  file=sys.stderr)
            return 1
        return 0
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    with open(TARGET, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
