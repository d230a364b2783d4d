// `nfqlb health`: backend health checks on the local table (docs/health.md). The probe options
// are shared with `nfqlb follow --health`, which applies the tier's verdict instead.

import { family, parseProbeSpec } from '../health/probe.js';
import type { HealthOptions } from '../health/standalone.js';
import { UsageError } from '../usage-error.js';
import { type CommandTable, opt } from './command.js';
import { intOption, metricsOption, type OptionSpecs, type Parsed } from './options.js';

/** The probe options, also of `nfqlb follow --health`. */
export const healthSpecs: OptionSpecs = {
  vip: { arg: true, help: 'The VIPs probed through each target fwmark: ADDR[,ADDR6] (one per family)' },
  hc_addr: { arg: true, help: "vip: probe the VIPs (default); target: the target's own address, the gateway of its fwmark route" },
  hc_interval: { arg: true, help: 'ms between the probes of a target (default 1000)' },
  hc_timeout: { arg: true, help: 'ms a probe may take (default 500, at most the interval)' },
  hc_rise: { arg: true, help: 'Good probes in a row that bring a down target up (default 2)' },
  hc_fall: { arg: true, help: 'Failed probes in a row that take an up target down (default 3)' },
  hc_warmup: { arg: true, help: 'ms after start during which no target is taken out (default 5000)' },
};

/** --vip: one address per family. */
function vipOption(text: string | undefined): string[] {
  if (text === undefined) throw new UsageError('--health needs --vip=ADDR[,ADDR6]');
  const vips = text.split(',');
  for (const v of vips) if (family(v) === 0) throw new UsageError(`--vip: '${v}' is not an IPv4 or IPv6 address`);
  if (new Set(vips.map(family)).size !== vips.length) throw new UsageError(`--vip: '${text}' has two addresses of one family`);
  return vips;
}

/** The health options of `p` (--health given), each checked. */
export function healthOptions(p: Parsed): Omit<HealthOptions, 'metrics'> {
  const spec = parseProbeSpec(opt(p, 'health', ''));
  const vips = vipOption(opt(p, 'vip'));
  const hcAddr = opt(p, 'hc_addr', 'vip');
  if (hcAddr !== 'vip' && hcAddr !== 'target') throw new UsageError(`--hc_addr: '${hcAddr}' is not vip or target`);
  const intervalMs = intOption('hc_interval', opt(p, 'hc_interval', '1000'), 10, 3_600_000);
  const timeoutMs = intOption('hc_timeout', opt(p, 'hc_timeout', '500'), 1, 3_600_000);
  if (timeoutMs > intervalMs) throw new UsageError(`--hc_timeout: ${timeoutMs} is longer than --hc_interval (${intervalMs})`);
  return {
    spec,
    vips,
    probeAddress: hcAddr,
    timing: {
      intervalMs,
      timeoutMs,
      rise: intOption('hc_rise', opt(p, 'hc_rise', '2'), 1, 100),
      fall: intOption('hc_fall', opt(p, 'hc_fall', '3'), 1, 100),
    },
    warmupMs: intOption('hc_warmup', opt(p, 'hc_warmup', '5000'), 0, 3_600_000),
  };
}

export const healthCommands: CommandTable = {
  health: {
    synopsis: [
      'health [--shm=nfqlb] --vip=ADDR[,ADDR6] --health=tcp:PORT|http:PORT/PATH [--hc_*=] [--metrics=]',
      "  Probe the table's targets through their fwmarks; take down ones out (draining) until they rise",
    ].join('\n'),
    options: {
      shm: { arg: true, help: 'Shared memory (default nfqlb)' },
      health: { arg: true, required: true, help: 'Probe: tcp:PORT (connect) or http:PORT/PATH (GET, 2xx or 3xx)' },
      ...healthSpecs,
      metrics: { arg: true, help: 'Serve Prometheus /metrics and /healthz on [ADDR:]PORT (default off; a port alone is loopback)' },
    },
    async run(p) {
      const o = { ...healthOptions(p), metrics: metricsOption(p) };
      const { runHealth } = await import('../health/standalone.js');
      return runHealth(opt(p, 'shm', 'nfqlb'), o);
    },
  },
};
