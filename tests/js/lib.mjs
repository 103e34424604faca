// Shared by the scripts tests/integration/test_e2b_js_sdk.py runs: each prints one JSON object
// on stdout. The SDK reads its settings from the environment only (E2B_API_URL, E2B_API_KEY,
// E2B_SANDBOX_URL), as a user's program would.

// One step of a script: its value, or the error the SDK raised, described (never thrown on),
// so that one failing call does not hide the results of the others.
export async function step(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    return { ok: false, error: describe(err) };
  }
}

export function describe(err) {
  const out = { name: err?.name ?? typeof err, message: String(err?.message ?? err) };
  for (const key of ['exitCode', 'stdout', 'stderr']) {
    if (err && err[key] !== undefined) out[key] = err[key];
  }
  return out;
}

// Prints the result and ends the process (the SDK's HTTP agents would keep it alive a while).
export function emit(result) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}

export function sandboxIdArg() {
  const id = process.argv[2];
  if (!id) {
    process.stderr.write(`usage: node ${process.argv[1]} SANDBOX_ID\n`);
    process.exit(2);
  }
  return id;
}
