// Read a resource with fhir-kit-client and follow one of its references with defaults.
// Usage: node follow_reference.mjs BASE TYPE ID ELEMENT  -> prints the target as JSON
import { Client } from 'fhir-kit-client';

async function main() {
  const [baseUrl, resourceType, id, element] = process.argv.slice(2);
  const client = new Client({ baseUrl });
  const resource = await client.read({ resourceType, id });
  const target = await client.resolve({ reference: resource[element].reference });
  process.stdout.write(JSON.stringify(target));
}

main().catch((err) => {
  process.stderr.write(String(err && err.response ? JSON.stringify(err.response) : err));
  process.exit(1);
});
