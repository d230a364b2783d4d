// The client side of the flow channel (flow-set, flow-list, trace-flow-*, ...): one request,
// one response, as the reference's commands send it. On a tcp address the control key goes
// first (see control-auth.ts); a refusal is an error, not a reply to print.
import { connect } from 'node:net';
import { flowAddress, formatControlAddress, socketOptions } from './control-address.js';
import { clientKey, REFUSED } from './control-auth.js';

/** Sends `action` with its parameters and resolves with the response text (NULs removed). */
export function flowRequest(action: string, params: readonly (readonly [string, string | undefined])[], timeoutMs = 5000): Promise<string> {
  const address = flowAddress();
  let request = '';
  let noKey = '';
  if (address.kind === 'tcp') {
    const k = clientKey();
    if ('key' in k) request += `auth:${k.key}\n`;
    else noKey = ` (${k.missing})`;
  }
  request += `action:${action}\n`;
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
    c.setTimeout(timeoutMs, () => c.destroy(new Error(`no answer from the flow server (${formatControlAddress(address)})`)));
    c.on('connect', () => c.end(request));
    c.on('data', (d: string) => (reply += d));
    c.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'ECONNREFUSED' || e.code === 'ENOENT'
          ? new Error('Connect failed. Connection refused (is nfqlb flowlb running in this network namespace?)')
          : e,
      );
    });
    c.on('close', (hadError) => {
      if (hadError) return;
      const text = reply.replace(/\0/g, '');
      if (text.startsWith(REFUSED))
        reject(new Error(`${formatControlAddress(address)} refused the request: ${text.slice(REFUSED.length).trim()}${noKey}`));
      else resolve(text);
    });
  });
}
