// Validates Prometheus Operator custom resources (ServiceMonitor,
// PodMonitor, PrometheusRule) against the operator's published schema, as
// packaged by the npm package @kubernetes-models/prometheus-operator
// (JSON schemas generated from the operator's Go API types, checked with
// ajv: types, required fields, enums and patterns such as durations).
//
//   node check_crds.mjs NODE_MODULES_DIR < documents.json
//
// stdin: a JSON array of {"file": ..., "doc": {...}}, one per YAML document
// (scripts/validate-deploy.sh converts the YAML). Prints one line per
// resource that fails, exits 1 if any does; every document must be one of
// the kinds above.
//
// Not checked: fields the schema does not know. Like the API server, which
// prunes them from custom resources, the schema ignores them; a misspelt
// optional field therefore passes here (the dashboard and rules checks
// catch misspelt metric names, which matter most).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node check_crds.mjs NODE_MODULES_DIR < documents.json");
  process.exit(2);
}
const KINDS = {
  "monitoring.coreos.com/v1:ServiceMonitor": "monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1:PodMonitor": "monitoring.coreos.com/v1/PodMonitor.js",
  "monitoring.coreos.com/v1:PrometheusRule": "monitoring.coreos.com/v1/PrometheusRule.js",
};

const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
let passed = 0;
for (const { file, doc } of docs) {
  const key = `${doc.apiVersion}:${doc.kind}`;
  const name = `${file} ${doc.kind}/${doc.metadata?.name}`;
  const modulePath = KINDS[key];
  if (!modulePath) {
    console.log(`  ${name}: no schema for ${key}`);
    failed++;
    continue;
  }
  const url = pathToFileURL(
    join(modules, "@kubernetes-models/prometheus-operator", modulePath),
  ).href;
  const Model = (await import(url))[doc.kind];
  try {
    new Model(doc).validate();
    passed++;
  } catch (e) {
    console.log(`  ${name}: ${e.message}`);
    failed++;
  }
}
if (failed > 0) process.exit(1);
console.log(`${passed} resources`);
