// FASHN's TypeScript SDK (npm fashn) runs one model swap against a local server with subscribe(),
// passing its client-side pollInterval and timeout options (the SDK sends them in the POST body).
// Usage: node subscribe.mjs <baseURL> <apiKey> <file holding the model image as a data URI> [aspect ratio, e.g. 4:5]
import { readFileSync } from 'node:fs';
import Fashn from 'fashn';

const [baseURL, apiKey, imageFile, aspectRatio] = process.argv.slice(2);
const client = new Fashn({ apiKey, baseURL, maxRetries: 0 });
const updates = [];
const result = await client.predictions.subscribe({
  model_name: 'model-swap',
  inputs: {
    model_image: readFileSync(imageFile, 'utf8'), return_base64: true, generation_mode: 'fast',
    ...(aspectRatio ? { aspect_ratio: aspectRatio } : {}),
  },
  pollInterval: 200,
  timeout: 300000,
  maxRetries: 1,
  onQueueUpdate: (status) => updates.push(status.status),
});
console.log(JSON.stringify({ result, updates }));
