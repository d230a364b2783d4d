// Trace selection parsing, levels, and the tracer's gating on the shared mask.
import { describe, expect, it } from 'vitest';
import { parseControlAddress } from '../../src/nfqlb/control-address.js';
import { pinoLevel } from '../../src/nfqlb/log-level.js';
import { MASK_WORD, parseTraceSelection, TRACE, Tracer } from '../../src/nfqlb/tracer.js';

describe('trace', () => {
  it('parses --selection into the reference mask bits', () => {
    expect(parseTraceSelection('log,packet,frag,flow-conf,sctp,target,flows')).toBe(0x7f);
    expect(parseTraceSelection('frag')).toBe(TRACE.FRAG);
    expect(() => parseTraceSelection('packet,bogus')).toThrow(/unknown trace 'bogus'/);
  });

  it('maps the reference log levels to pino levels', () => {
    expect([3, 4, 5, 6, 7].map(pinoLevel)).toEqual(['error', 'warn', 'info', 'info', 'debug']);
  });

  it('emits JSON lines only for selected kinds', () => {
    const config = new Int32Array(2);
    const lines: string[] = [];
    const t = new Tracer(config, (l) => lines.push(l));
    expect(t.on(TRACE.PACKET)).toBe(false);
    config[MASK_WORD] = TRACE.PACKET | TRACE.FLOW_CONF;
    expect(t.on(TRACE.PACKET)).toBe(true);
    expect(t.on(TRACE.FRAG)).toBe(false);
    t.emit('FLOW_CONF', { a: 1 });
    expect(JSON.parse(lines[0]!)).toMatchObject({ trace: 'flow-conf', a: 1 });
  });
});

describe('control addresses', () => {
  it('parses unix (abstract) and tcp forms as the reference', () => {
    expect(parseControlAddress('unix:nfqlb')).toEqual({ kind: 'unix', path: '\0nfqlb' });
    expect(parseControlAddress('tcp:[::1]:10033')).toEqual({ kind: 'tcp', host: '::1', port: 10033 });
    expect(parseControlAddress('tcp:127.0.0.1:7')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 7 });
    for (const bad of ['nfqlb', 'unix:', 'tcp:[::1]', 'tcp:1.2.3.4:99999', 'tcp:host:80', 'tcp:[zz]:1']) {
      expect(() => parseControlAddress(bad), bad).toThrow(/Failed to parse address/);
    }
  });
});
