// Validates Prometheus Operator resources (JSON list on stdin) against the CRD schemas that the
// @kubernetes-models/prometheus-operator package compiles from the operator's CRDs; kubernetes-validate
// has schemas for built-in kinds only. $CRD_MODELS is the folder that package is installed in.
//
// The compiled validators check types, required fields, enums and patterns but accept unknown fields
// (CRD schemas leave pruning to the API server). Strictness, as kubernetes-validate --strict gives the
// built-in kinds, is checked here by hand: every field must be declared in the package's type
// declarations (.d.ts), followed through the operator's own nested types.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

function declaredFields(file) {
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const [, name, from] of text.matchAll(/import \{ (\w+) \} from "(\.\/[\w.]+)";/g)) {
    imports.set(name, join(dirname(file), from.replace(/\.js$/, ".d.ts")));
  }
  const body = text.slice(text.indexOf("export interface"), text.indexOf("\n}", text.indexOf("export interface")));
  const fields = new Map();
  for (const [, field, type] of body.matchAll(/^ {4}"([^"]+)"\??: (.+?);?$/gm)) {
    const nested = type.match(/^(?:Array<)?(I\w+)>?$/);
    fields.set(field, nested && imports.has(nested[1]) ? imports.get(nested[1]) : null);
  }
  return fields;
}

function unknownFields(value, file, path) {
  if (Array.isArray(value)) return value.flatMap((item, i) => unknownFields(item, file, `${path}/${i}`));
  if (value === null || typeof value !== "object" || !existsSync(file)) return [];
  const fields = declaredFields(file);
  if (fields.size === 0) return [];  // an alias of a scalar or a map: nothing to check
  return Object.entries(value).flatMap(([key, item]) => fields.has(key)
    ? (fields.get(key) ? unknownFields(item, fields.get(key), `${path}/${key}`) : [])
    : [`${path}/${key} is not a field of ${file.split("/").pop().replace(".d.ts", "")}`]);
}

const root = join(process.env.CRD_MODELS, "node_modules", "@kubernetes-models", "prometheus-operator");
const documents = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const document of documents) {
  const [group, version] = document.apiVersion.split("/");
  const module = await import(pathToFileURL(join(root, group, version, `${document.kind}.js`)).href);
  try {
    new module[document.kind](document).validate();
    const unknown = unknownFields(document, join(root, group, version, `${document.kind}.d.ts`), "");
    if (unknown.length) throw new Error(unknown.join(", "));
    console.log(`valid: ${document.kind} ${document.metadata.name}`);
  } catch (error) {
    failed += 1;
    console.log(`INVALID: ${document.kind} ${document.metadata.name}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
