// The registry commands' options: endpoints, TLS files, the user and where the password comes
// from (never argv), the target selector; and bad input refused with one line before any
// request is made (the endpoint given here has nothing listening: a request would say so).
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/nfqlb.js';
import { parseOptions } from '../../src/cli/options.js';
import { etcdOptionSpecs, etcdOptions, PASSWORD_ENV, parseEndpoints, selectorOption } from '../../src/cli/registry.js';
import { captureOutput } from './capture-output.js';

const files: Record<string, string> = { '/ca.pem': 'CA', '/c.pem': 'CERT', '/k.pem': 'KEY', '/pw': 'secret\n', '/empty': '' };
const read = (f: string): Buffer => {
  if (!(f in files)) throw Object.assign(new Error(`ENOENT: ${f}`), { code: 'ENOENT' });
  return Buffer.from(files[f]!);
};
const options = (argv: string[], env: NodeJS.ProcessEnv = {}) => etcdOptions(parseOptions(argv, etcdOptionSpecs), env, read);

describe('parseEndpoints', () => {
  it.each([
    ['http://127.0.0.1:2379', ['http://127.0.0.1:2379'], false],
    [
      'https://10.0.0.1:2379,https://etcd-2.example:2379,https://[fd00::3]:2379',
      ['https://10.0.0.1:2379', 'https://etcd-2.example:2379', 'https://[fd00::3]:2379'],
      true,
    ],
  ])('%s', (text, endpoints, https) => {
    expect(parseEndpoints(text)).toEqual({ endpoints, https });
  });

  it.each([
    ['127.0.0.1:2379', "--etcd: '127.0.0.1:2379' is not http(s)://HOST:PORT"],
    ['http://127.0.0.1', "--etcd: 'http://127.0.0.1' is not http(s)://HOST:PORT"],
    ['http://127.0.0.1:70000', "--etcd: 'http://127.0.0.1:70000' is not http(s)://HOST:PORT"],
    ['http://h:1/path', "--etcd: 'http://h:1/path' is not http(s)://HOST:PORT"],
    ['http://a:1,', "--etcd: '' is not http(s)://HOST:PORT"],
    ['http://a:1,https://b:1', '--etcd: the endpoints mix http:// and https://'],
  ])('refuses %s', (text, message) => {
    expect(() => parseEndpoints(text)).toThrow(message);
  });
});

describe('etcdOptions', () => {
  it("defaults to etcdctl's endpoint, no TLS, no user, 5 s", () => {
    expect(options([])).toEqual({ endpoints: ['http://127.0.0.1:2379'], tls: null, user: null, timeoutMs: 5000 });
  });

  it('reads the TLS files and the password from a file (its newline dropped) or the environment', () => {
    const tls = ['--etcd=https://e:2379', '--etcd_cacert=/ca.pem', '--etcd_cert=/c.pem', '--etcd_key=/k.pem'];
    expect(options([...tls, '--etcd_user=writer', '--etcd_password_file=/pw'])).toEqual({
      endpoints: ['https://e:2379'],
      tls: { ca: Buffer.from('CA'), cert: Buffer.from('CERT'), key: Buffer.from('KEY') },
      user: { name: 'writer', password: 'secret' },
      timeoutMs: 5000,
    });
    expect(options(['--etcd_user=writer'], { [PASSWORD_ENV]: 'from-env' }).user).toEqual({ name: 'writer', password: 'from-env' });
    // The file wins over the environment; an https endpoint alone uses the system roots.
    expect(options(['--etcd_user=w', '--etcd_password_file=/pw'], { [PASSWORD_ENV]: 'x' }).user?.password).toBe('secret');
    expect(options(['--etcd=https://e:1']).tls).toEqual({ ca: null, cert: null, key: null });
    // A password in the environment without a user is someone else's: not used.
    expect(options([], { [PASSWORD_ENV]: 'x' }).user).toBeNull();
  });

  it.each([
    [['--etcd_user=writer'], `--etcd_user needs a password: --etcd_password_file= or $${PASSWORD_ENV}`],
    [['--etcd_password_file=/pw'], '--etcd_password_file needs --etcd_user'],
    [['--etcd_user=w', '--etcd_password_file=/empty'], 'the etcd password is empty'],
    [['--etcd_user=a:b', '--etcd_password_file=/pw'], "--etcd_user: 'a:b' is not a user name"],
    [['--etcd=https://e:1', '--etcd_cert=/c.pem'], '--etcd_cert and --etcd_key go together'],
    [['--etcd_cacert=/ca.pem'], '--etcd_cacert, --etcd_cert and --etcd_key need https:// endpoints'],
    [['--etcd=https://e:1', '--etcd_cacert=/nope.pem'], '--etcd_cacert: cannot read /nope.pem (ENOENT)'],
    [['--etcd_timeout=10'], '--etcd_timeout: 10 is out of range 100..600000'],
  ])('refuses %j', (argv, message) => {
    expect(() => options(argv)).toThrow(message);
  });

  it('takes no password from the command line, and never repeats one given there', () => {
    const refused = `--etcd_password: never on the command line; use --etcd_password_file= or $${PASSWORD_ENV}`;
    expect(() => options(['--etcd_user=w', '--etcd_password=hunter2'])).toThrow(refused);
    expect(() => options(['--etcd_user=w', '--etcd_pass=hunter2'])).toThrow(
      'option --etcd_pass is ambiguous (--etcd_password_file, --etcd_password)',
    );
    expect(() => options(['--etcd_user=w', '--etcd_password_file=hunter2'])).toThrow(
      /^--etcd_password_file: cannot read the file \(ENOENT\)$/,
    );
  });
});

describe('selectorOption', () => {
  const sel = (argv: string[]) => selectorOption(parseOptions(argv, { slot: { arg: true, help: '' }, fwmark: { arg: true, help: '' } }));
  it.each([
    [['--slot=3'], { slot: 3 }],
    [['--fwmark=101'], { fwmark: 101 }],
  ])('%j', (argv, want) => {
    expect(sel(argv)).toEqual(want);
  });
  it.each([
    [[], 'name the target with one of --slot or --fwmark'],
    [['--slot=1', '--fwmark=2'], 'name the target with one of --slot or --fwmark'],
    [['--fwmark=0'], '--fwmark: 0 is out of range 1..2147483647'],
    [['--slot=-1'], '--slot: -1 is out of range 0..2147483647'],
  ])('refuses %j', (argv, message) => {
    expect(() => sel(argv)).toThrow(message);
  });
});

describe('nfqlb registry and register refuse bad input before any request', () => {
  const io = { out: '', err: '' };
  beforeEach(() => {
    io.out = '';
    io.err = '';
    captureOutput(io);
  });
  afterEach(() => vi.restoreAllMocks());

  const NOWHERE = '--etcd=http://127.0.0.1:9';
  it.each([
    [['registry', 'init', NOWHERE, '--service=web', '--M=2'], 'nfqlb registry init: --M: 2 is out of range 3..2147483647'],
    [['registry', 'init', NOWHERE, '--service=web', '--M=97', '--N=98'], "nfqlb registry init: N can't be larger than M (98 > 97)"],
    [['registry', 'init', NOWHERE], 'nfqlb registry init: missing option --service'],
    [
      ['registry', 'show', NOWHERE, '--service=a/b'],
      "nfqlb registry show: --service: 'a/b' is not a name (letters, digits, _.-, at most 64)",
    ],
    [['registry', 'drain', NOWHERE, '--service=web'], 'nfqlb registry drain: name the target with one of --slot or --fwmark'],
    [['registry', 'delete', NOWHERE, '--service=web', '--fwmark=x'], "nfqlb registry delete: --fwmark: 'x' is not a number"],
    [['registry', 'frobnicate'], "nfqlb registry: unknown command 'frobnicate' (try 'nfqlb registry -h')"],
    [['register', NOWHERE, '--service=web'], 'nfqlb register: missing option --fwmark'],
    [['register', NOWHERE, '--service=web', '--fwmark=101', '--drain=5'], 'nfqlb register: --drain goes with --lease'],
    [['register', NOWHERE, '--service=web', '--fwmark=101', '--lease=0'], 'nfqlb register: --lease: 0 is out of range 1..3600'],
    [
      ['register', NOWHERE, '--service=web', '--fwmark=101', '--name=a b'],
      "nfqlb register: --name: 'a b' is not 1..64 printable characters without spaces",
    ],
    [
      ['register', NOWHERE, '--service=web', '--fwmark=101', '--etcd_password=pw'],
      `nfqlb register: --etcd_password: never on the command line; use --etcd_password_file= or $${PASSWORD_ENV}`,
    ],
    [['follow', NOWHERE], 'nfqlb follow: missing option --service'],
    [['follow', NOWHERE, '--service=web', '--relist=5'], 'nfqlb follow: --relist: 5 is out of range 100..3600000'],
    [
      ['follow', NOWHERE, '--service=web', '--shm=a/b'],
      "nfqlb follow: invalid shm name 'a/b': it must be a plain non-empty file name (no '/')",
    ],
    [['follow', NOWHERE, '--service=web', '--metrics=99999'], "nfqlb follow: --metrics: '99999' has a port out of range 1..65535"],
    [['follow', NOWHERE, '--service=web', '--loglevel=9'], 'nfqlb follow: --loglevel: 9 is out of range 4..7'],
    [
      ['follow', NOWHERE, '--service=web', '--etcd_user=lb'],
      `nfqlb follow: --etcd_user needs a password: --etcd_password_file= or $${PASSWORD_ENV}`,
    ],
    [['follow', NOWHERE, '--service=web', '--vip=10.0.0.0'], 'nfqlb follow: --vip goes with --health'],
    [['follow', NOWHERE, '--service=web', '--health=tcp:80'], 'nfqlb follow: --health needs --vip=ADDR[,ADDR6]'],
    [
      ['follow', NOWHERE, '--service=web', '--health=tcp:80', '--vip=10.0.0.0', '--lb=a/b'],
      "nfqlb follow: --lb: 'a/b' is not a name (letters, digits, _.-, at most 64)",
    ],
    [
      ['follow', NOWHERE, '--service=web', '--health=tcp:80', '--vip=10.0.0.0', '--hc_lease=0'],
      'nfqlb follow: --hc_lease: 0 is out of range 1..3600',
    ],
  ])('%j', async (argv, line) => {
    expect(await main(argv)).toBe(1);
    expect(io.err).toBe(`${line}\n`);
    expect(io.out).toBe('');
  });

  it('lists its commands', async () => {
    expect(await main(['registry', '-h'])).toBe(0);
    expect(io.out).toBe('Usage: nfqlb registry <command> [opt...]\nCommands:\n  init\n  show\n  drain\n  undrain\n  delete\n');
    io.out = '';
    expect(await main(['-h'])).toBe(0);
    expect(io.out).toContain('  registry\n  register\n  follow\n');
  });
});
