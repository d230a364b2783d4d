// The contrib/bird templates the lab fills in: every field gets a value, none is left over.

import { readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { renderTemplate } from '../../src/lab/bgp.js';

const template = (name: string): string => readFileSync(new URL(`../../contrib/bird/${name}.conf`, import.meta.url), 'utf8');
const fields = {
  router_id: '192.168.2.201',
  vip4: '10.0.0.0',
  vip6: '1000::',
  lb_as: 65001,
  gateway_as: 65000,
  gateway4: '192.168.2.221',
  gateway6: '1000::1:192.168.2.221',
  uplink: 'eth2',
  downlink: 'eth1',
  announce_if: 'vip0',
  lb_net4: '192.168.2.0/24',
  lb_net6: '1000::1:192.168.2.0/120',
};

describe('renderTemplate', () => {
  test.each(['lb', 'gateway'])('fills every field of contrib/bird/%s.conf', (name) => {
    const text = renderTemplate(template(name), fields);
    expect(text).not.toMatch(/\{\{|\}\}/);
    expect(text).toContain('router id 192.168.2.201;');
  });

  test('the LB announces the VIPs through the lb-held device only', () => {
    const text = renderTemplate(template('lb'), fields);
    expect(text).toContain('route 10.0.0.0/32 via "vip0";');
    expect(text).toContain('route 1000::/128 via "vip0";');
  });

  test('a field without a value is an error, not an empty string', () => {
    expect(() => renderTemplate('router id {{router_id}}; as {{lb_as}};', { router_id: '1.2.3.4' })).toThrow('{{lb_as}} has no value');
  });
});
