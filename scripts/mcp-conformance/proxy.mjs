// A test shim between the MCP conformance suite and `host serve`, for what
// the suite cannot do itself (scripts/mcp-conformance.sh):
//
// * it sends no credentials: the shim adds `Authorization: Bearer $KEY`
//   (the key of the tenant the fixtures are registered for);
// * its fixture tools have fixed names (`test_simple_text`), while Toolhost
//   names a tool's functions `<tool>__<function>`: the shim strips the
//   `mcp-fixtures__` prefix (and turns kebab-case into snake_case) in
//   tools/list answers, and adds it back to tools/call requests (body and
//   `Mcp-Name` header; Toolhost resolves snake_case function names).
//
// Everything else passes through unchanged, `Host` and `Origin` included
// (the suite's DNS-rebinding checks reach the server). Usage:
//   node proxy.mjs UPSTREAM_URL KEY    (prints the port it listens on)
import http from 'node:http';

const [upstream, key] = process.argv.slice(2);
const target = new URL(upstream);
const PREFIX = 'mcp-fixtures__';

const toSuite = (name) =>
  name.startsWith(PREFIX) ? name.slice(PREFIX.length).replaceAll('-', '_') : name;
const toHost = (name) => (name.includes('__') ? name : PREFIX + name);

function rewriteAnswer(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return text;
  }
  const tools = message?.result?.tools;
  if (Array.isArray(tools)) {
    message.result.tools = tools.map((t) => ({ ...t, name: toSuite(t.name) }));
  }
  return JSON.stringify(message);
}

function rewriteSse(chunk) {
  return chunk.replace(/^data: ?(.*)$/gm, (_, data) => `data: ${rewriteAnswer(data)}`);
}

const server = http.createServer((req, res) => {
  const body = [];
  req.on('data', (c) => body.push(c));
  req.on('end', () => {
    let payload = Buffer.concat(body);
    const headers = { ...req.headers, authorization: `Bearer ${key}` };
    try {
      const message = JSON.parse(payload.toString('utf8'));
      if (message?.method === 'tools/call' && typeof message.params?.name === 'string') {
        message.params.name = toHost(message.params.name);
        if (headers['mcp-name']) headers['mcp-name'] = toHost(headers['mcp-name']);
        payload = Buffer.from(JSON.stringify(message));
      }
    } catch {
      // not JSON: pass through
    }
    headers['content-length'] = String(payload.length);
    const up = http.request(
      { host: target.hostname, port: target.port, path: req.url, method: req.method, headers },
      (answer) => {
        const type = answer.headers['content-type'] ?? '';
        const out = { ...answer.headers };
        delete out['content-length'];
        res.writeHead(answer.statusCode, out);
        answer.setEncoding('utf8');
        let pending = '';
        answer.on('data', (c) => {
          if (type.startsWith('text/event-stream')) {
            pending += c;
            const cut = pending.lastIndexOf('\n\n');
            if (cut >= 0) {
              res.write(rewriteSse(pending.slice(0, cut + 2)));
              pending = pending.slice(cut + 2);
            }
          } else {
            pending += c;
          }
        });
        answer.on('end', () => {
          res.end(type.startsWith('application/json') ? rewriteAnswer(pending) : rewriteSse(pending));
        });
      },
    );
    up.on('error', (e) => {
      res.writeHead(502);
      res.end(String(e));
    });
    up.end(payload);
  });
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
