// A Node.js client of posters.v1.PosterSimilarity, built from protos/ alone (no generated code).
// Usage: node check.mjs TARGET IMAGE_FILE ITEM_ID GENRE
// Prints one JSON object with what each call returned; tests/test_node_client.py compares it with the
// Python client's answers. Exits 1 on any unexpected failure.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [target, imageFile, itemArg, genre] = process.argv.slice(2);
const itemId = Number(itemArg);
const protos = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../protos");
const options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [protos] };
const definition = protoLoader.loadSync("posters/v1/posters.proto", options);
const posters = grpc.loadPackageDefinition(definition).posters.v1;
const client = new posters.PosterSimilarity(target, grpc.credentials.createInsecure());

// google.rpc.Status and its details, decoded from the grpc-status-details-bin trailer
const root = new protobuf.Root();
root.resolvePath = (_origin, target) => path.join(protos, target);
root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const Status = root.lookupType("google.rpc.Status");

const call = (method, request) =>
  new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 30000 }, (error, response) => (error ? reject(error) : resolve(response)));
  });

function details(error) {
  const [bin] = error.metadata.get("grpc-status-details-bin");
  if (!bin) return [];
  const status = Status.decode(bin);
  return status.details.map((any) => {
    const typeName = any.type_url.split("/").pop();
    const message = root.lookupType(typeName).decode(any.value);
    return { type: typeName, ...root.lookupType(typeName).toObject(message, { longs: Number }) };
  });
}

const ids = (response) => response.neighbors.map((n) => n.item_id);
const out = {};
try {
  out.item = ids(await call("SimilarToItem", { item_id: itemId, options: { k: 5 } }));
  out.filtered = (
    await call("SimilarToItem", { item_id: itemId, options: { k: 5, filter: { genres_any: [genre] } } })
  ).neighbors.map((n) => ({ id: n.item_id, genres: n.genres }));
  out.image = ids(await call("SearchByImage", { image: readFileSync(imageFile), options: { k: 3 } }));
  const batch = await call("BatchSearch", {
    queries: [{ item: { item_id: itemId, options: { k: 2 } } }, { item: { item_id: 987654321 } }],
  });
  out.batch = { first: ids(batch.results[0]), statuses: batch.statuses.map((s) => ({ code: s.code, message: s.message })) };
  const got = await call("GetPosters", { item_ids: [itemId, 987654321] });
  out.posters = {
    ids: got.posters.map((p) => p.item_id),
    jpeg_magic: got.posters.map((p) => Buffer.from(p.jpeg).subarray(0, 3).toString("hex")),
    sizes: got.posters.map((p) => [p.width, p.height]),
    missing: got.missing_ids,
  };
  try {
    await call("SimilarToItem", { item_id: itemId, options: { k: -1 } });
    out.error = "no error";
  } catch (error) {
    out.error = { code: grpc.status[error.code], message: error.details, details: details(error) };
  }
} catch (error) {
  console.error(`unexpected failure: ${error.message}`);
  process.exit(1);
} finally {
  client.close();
}
console.log(JSON.stringify(out));
