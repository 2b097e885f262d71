// Drive the gateway with fhir-kit-client's defaults: operation() POSTs, nextPage() follows links.
// Usage: node everything.mjs <FHIR base> <patient id>; prints a JSON summary on stdout.
import { Client } from 'fhir-kit-client';

const [baseUrl, id] = process.argv.slice(2);
const client = new Client({ baseUrl });
const matches = (bundle) =>
  (bundle.entry ?? []).filter((e) => e.search?.mode === 'match').map((e) => e.fullUrl);

const whole = await client.operation({ name: '$everything', resourceType: 'Patient', id });
const input = {
  resourceType: 'Parameters',
  parameter: [
    { name: '_type', valueString: 'Encounter' },
    { name: '_count', valueInteger: 3 },
  ],
};
let page = await client.operation({ name: 'everything', resourceType: 'Patient', id, input });
const total = page.total;
const paged = [];
while (page) {
  paged.push(...matches(page));
  page = await client.nextPage({ bundle: page });
}
console.log(JSON.stringify({ resourceType: whole.resourceType, total: whole.total, encounters: total, paged }));
