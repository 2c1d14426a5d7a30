// Validates Prometheus Operator resources (JSON list on stdin) against the CRD schemas that the
// @kubernetes-models/prometheus-operator package compiles from the operator's CRDs; kubernetes-validate
// has schemas for built-in kinds only. $CRD_MODELS is the folder that package is installed in.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = join(process.env.CRD_MODELS, "node_modules", "@kubernetes-models", "prometheus-operator");
const documents = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const document of documents) {
  const [group, version] = document.apiVersion.split("/");
  const module = await import(pathToFileURL(join(root, group, version, `${document.kind}.js`)).href);
  try {
    new module[document.kind](document).validate();
    console.log(`valid: ${document.kind} ${document.metadata.name}`);
  } catch (error) {
    failed += 1;
    console.log(`INVALID: ${document.kind} ${document.metadata.name}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
