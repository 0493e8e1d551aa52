// The gateway serves the built app at /ui (frontend/dist). Everything is bundled:
// no CDN, no web fonts, so the UI works on an offline cluster.
//
// `npm run dev` proxies the API to a gateway: LLAMA_ORCH_GATEWAY (default
// http://127.0.0.1:8080).
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

declare const process: { env: Record<string, string | undefined> }
const gateway = process.env.LLAMA_ORCH_GATEWAY ?? 'http://127.0.0.1:8080'

export default defineConfig({
  base: '/ui/',
  plugins: [vue()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // One small app: a single JS and CSS file keeps the gateway's static route trivial.
    chunkSizeWarningLimit: 1024,
    sourcemap: false,
  },
  server: {
    proxy: {
      '/v1': { target: gateway, changeOrigin: true },
      '/v2': { target: gateway, changeOrigin: true },
      '/healthz': { target: gateway, changeOrigin: true },
    },
  },
})
