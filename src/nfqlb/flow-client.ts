// The client side of the flow channel (flow-set, flow-list, trace-flow-*, ...): one request,
// one response, as the reference's commands send it.
import { connect } from 'node:net';
import { flowAddress, socketOptions } from './control-address.js';

/** Sends `action` with its parameters and resolves with the response text (NULs removed). */
export function flowRequest(action: string, params: readonly (readonly [string, string | undefined])[], timeoutMs = 5000): Promise<string> {
  const address = flowAddress();
  let request = `action:${action}\n`;
  for (const [k, v] of params) {
    if (v === undefined) continue;
    if (v.includes('\n')) throw new Error(`--${k}: newlines are not allowed`);
    request += `${k}:${v}\n`;
  }
  request += 'eoc:\n';
  return new Promise((resolve, reject) => {
    const c = connect(socketOptions(address));
    let reply = '';
    c.setEncoding('utf8');
    c.setTimeout(timeoutMs, () => c.destroy(new Error(`no answer from the flow server (${address.kind === 'unix' ? 'unix:' + address.path.slice(1) : `tcp:${address.host}:${address.port}`})`)));
    c.on('connect', () => c.end(request));
    c.on('data', (d: string) => (reply += d));
    c.on('error', (e: NodeJS.ErrnoException) => {
      reject(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? new Error('Connect failed. Connection refused (is nfqlb flowlb running in this network namespace?)') : e);
    });
    c.on('close', (hadError) => {
      if (!hadError) resolve(reply.replace(/\0/g, ''));
    });
  });
}
