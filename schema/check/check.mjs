// Parses schema/asyncapi.yaml with the AsyncAPI parser (@asyncapi/parser) and prints, one per line, each
// channel's address and the $id of each of its messages' payload schemas, for hil-tests/asyncapi.rs to
// compare with the hub's topics and the JSON Schema files the tests validate against. Exits 1 with the
// parser's diagnostics when the document is not valid AsyncAPI.
import { Parser, fromFile, DiagnosticSeverity } from '@asyncapi/parser';

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
if (!document || errors.length > 0) {
  for (const d of errors) console.error(`${d.code}: ${d.message} at ${d.path.join('.')}`);
  process.exit(1);
}
for (const d of diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning)) {
  console.error(`warning ${d.code}: ${d.message} at ${d.path.join('.')}`);
}
for (const channel of document.channels()) {
  for (const message of channel.messages()) {
    const payload = message.payload();
    const schema = payload ? payload.json().schema ?? payload.json() : {};
    console.log(`${channel.address()} ${schema['$id'] ?? '(no $id)'}`);
  }
}
