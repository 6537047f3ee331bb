// The web console's build (`node scripts/build.mjs dashboard`, run by `npm run setup`, `npm
// start` and `npm test` when its sources changed) and dev server (`npx vite` here, with the API
// of a server on 127.0.0.1:8080 proxied under /v1).
import { defineConfig } from 'vite';

export default defineConfig({
  // Preact's JSX runtime, without a plugin.
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    target: 'es2022',
    assetsDir: 'assets',
    // Fonts and icons stay files under /assets (the CSP allows no data: fonts or scripts).
    assetsInlineLimit: 0,
    sourcemap: true,
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  server: {
    proxy: { '/v1': { target: 'http://127.0.0.1:8080', ws: true } },
  },
});
