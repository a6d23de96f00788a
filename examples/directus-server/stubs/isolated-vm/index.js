function unavailable() {
  throw new Error('isolated-vm stub: sandboxed extensions are not available in this test build');
}
module.exports = { Isolate: unavailable, Reference: unavailable, Callback: unavailable, ExternalCopy: unavailable, Context: unavailable };
