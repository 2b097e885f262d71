// Preloaded (node -r) under the SMART bulk-data-client, whose package.json asks for
// Node >=15 <19. From Node 19 on, the global HTTP agent keeps connections alive, and the
// client's HTTP cache (got 11) then waits for a kept-alive response to end that never
// does: the process exits 0 having done nothing. This gives it one-shot connections again.
const http = require('node:http');
const https = require('node:https');

http.globalAgent = new http.Agent({ keepAlive: false });
https.globalAgent = new https.Agent({ keepAlive: false });
