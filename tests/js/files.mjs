// sandbox.files through Sandbox.connect: text and binary (every byte value) round trips, both
// upload encodings, list, and a missing file. Usage: node files.mjs SANDBOX_ID
import { Sandbox } from 'e2b';
import { emit, sandboxIdArg, step } from './lib.mjs';

const sbx = await Sandbox.connect(sandboxIdArg());
const bytes = Uint8Array.from({ length: 1024 }, (_, i) => i % 256);
const hex = (data) => Buffer.from(data).toString('hex');

const result = {
  writeText: await step(async () => {
    const info = await sbx.files.write('js/hello.txt', 'hello from node\n');
    return { path: info.path, name: info.name, type: info.type };
  }),
  readText: await step(() => sbx.files.read('js/hello.txt')),
  writeBinary: await step(async () => (await sbx.files.write('js/all.bin', bytes)).path),
  writeOctetStream: await step(
    async () => (await sbx.files.write('js/octet.bin', bytes, { useOctetStream: true })).path,
  ),
  expectedHex: hex(bytes),
  readBinary: await step(async () => {
    const got = await sbx.files.read('/home/user/js/all.bin', { format: 'bytes' });
    return { isUint8Array: got instanceof Uint8Array, hex: hex(got) };
  }),
  readOctetStream: await step(async () =>
    hex(await sbx.files.read('js/octet.bin', { format: 'bytes' })),
  ),
  list: await step(async () =>
    (await sbx.files.list('js')).map((e) => ({ name: e.name, type: e.type, size: e.size, path: e.path })),
  ),
  readMissing: await step(() => sbx.files.read('js/missing.txt')),
};
emit(result);
