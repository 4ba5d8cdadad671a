// An S3-compatible object store spoken over libcurl with AWS SigV4, and the artifact store mirrored in a bucket.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "flow/artifact_store.h"
#include "flow/config.h"

namespace sdstack::flow {

struct S3Config {
  std::string endpoint;  // "http://127.0.0.1:8080" or "https://s3.eu-west-1.amazonaws.com"
  std::string region = "us-east-1";
  std::string bucket;
  std::string prefix;  // optional key prefix, e.g. "sdstack/": every key the client uses goes under it
  std::string access_key, secret_key;
  bool path_style = true;  // false: virtual-host style, "bucket.host"
};

// Fills config's access_key and secret_key when either is empty: from AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY when both are set, else from the AWS-style INI file `credentials_file`
// ("" = $AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials), section [`profile`] ("" =
// $AWS_PROFILE, else "default"), keys aws_access_key_id and aws_secret_access_key. NotFound naming
// both places when neither has them; the error never holds a key.
// The client's config for the store `sdstack config s3` described (credentials not filled in).
S3Config s3_config_of(const S3StoreConfig& store);

base::Status load_s3_credentials(S3Config& config, const std::string& credentials_file, const std::string& profile);

// One page of a ListObjectsV2 answer.
struct S3ListPage {
  std::vector<std::string> keys;  // full keys, XML entities decoded
  bool truncated = false;
  std::string next_continuation_token;  // set when truncated
};

// Parses a ListObjectsV2 result document; DataLoss naming `source` when it is not one (a truncated
// page without a continuation token too).
base::Result<S3ListPage> parse_s3_list_page(const std::string& xml, const std::string& source);

// The Code and Message of an S3 <Error> document; both empty when `xml` is not one.
struct S3ErrorDocument {
  std::string code;
  std::string message;
};
S3ErrorDocument parse_s3_error(const std::string& xml);

// "a &amp; b &#x41;" -> "a & b A": the five named entities and numeric ones (as UTF-8). Text that
// is not an entity is kept as it is.
std::string xml_unescape(std::string_view text);

// AWS's URI encoding: every byte but A-Z a-z 0-9 - . _ ~ as %XX (uppercase hex), '/' too unless
// `keep_slashes` (object paths keep theirs; query values do not).
std::string s3_uri_encode(std::string_view text, bool keep_slashes);

// The URL of `key` (under config.prefix) in config.bucket: "<endpoint>/<bucket>/<prefix><key>" in
// path style, "<scheme>://<bucket>.<host>/<prefix><key>" in virtual-host style. An empty `key`
// gives the bucket's own URL (with no trailing '/' in path style). `query`, when not empty, must
// already be in canonical form (sorted, encoded): libcurl 7.88 signs it as it is.
std::string s3_url(const S3Config& config, const std::string& key, const std::string& query = "");

// What a client has done, for callers that report it and tests that check that nothing is sent twice.
struct S3Stats {
  int64_t requests = 0;     // HTTP requests, retries included
  int64_t objects_put = 0;  // successful PUTs of objects
  int64_t bytes_put = 0;
  int64_t objects_got = 0;  // successful GETs of objects
  int64_t bytes_got = 0;
};

// A client of one bucket. Keys are relative to config.prefix; messages name objects as
// "s3://bucket/<prefix><key>" and never hold the credentials. Requests that fail on a connection
// error or a 5xx answer are retried a few times with backoff. One libcurl handle, its connections
// kept alive between requests: not thread-safe, use one client per thread.
class S3Client {
 public:
  explicit S3Client(S3Config config);
  ~S3Client();
  S3Client(const S3Client&) = delete;
  S3Client& operator=(const S3Client&) = delete;

  const S3Config& config() const { return config_; }
  const S3Stats& stats() const { return stats_; }
  // "s3://bucket/<prefix><key>".
  std::string uri(const std::string& key) const;

  // Uploads the file `path` as `key`, streamed from disk (it is read twice: once to hash it, since
  // the signature covers the payload's sha256, and once to send it). When `expected_sha256` is
  // given and the file's differs, nothing is sent: DataLoss naming the file. Files over 5 GiB
  // (S3's limit for one PUT) are Unsupported: multipart uploads are not implemented yet.
  base::Status put_file(const std::string& key, const std::string& path, const std::string& expected_sha256 = "");
  base::Status put_data(const std::string& key, std::string_view bytes);

  // Downloads `key` to `path`, written under a temporary name beside it and renamed into place
  // once complete, so `path` is never half-written. NotFound when there is no such key.
  base::Status get_to_file(const std::string& key, const std::string& path);
  // `key`'s bytes, or nullopt when there is no such key.
  base::Result<std::optional<std::string>> get_data(const std::string& key);
  // `key`'s size, or nullopt when there is no such key.
  base::Result<std::optional<int64_t>> head(const std::string& key);

  // The keys that start with `prefix` (both relative to config.prefix), in S3's order (sorted by
  // UTF-8 bytes), following continuation tokens; `page_size` is ListObjectsV2's max-keys.
  base::Result<std::vector<std::string>> list(const std::string& prefix, int page_size = 1000);

  // Deletes `key`; deleting a key that is not there is not an error (S3 says 204 either way).
  base::Status remove(const std::string& key);

  // Creates config.bucket unless it exists already (whoever owns it: a bucket owned by someone
  // else is the 403 that a later request gets).
  base::Status create_bucket_if_missing();

 private:
  struct Request;
  struct Response;
  base::Result<Response> perform(const Request& request);
  base::Status error_for(const Request& request, const Response& response) const;

  S3Config config_;
  S3Stats stats_;
  void* curl_;  // CURL*, kept out of this header
};

// Where the artifact store's pieces lie in the bucket (under config.prefix), as in a local store.
std::string s3_object_key(const std::string& sha256);  // "objects/sha256/ab/ab12..."
std::string s3_manifest_key(const std::string& key);   // "manifests/<key>.json"

// Uploads key's manifest from `local` and the objects it needs that the bucket lacks (a HEAD for
// each first; one of the right size counts as there). The manifest goes last, so the bucket never
// holds a manifest whose objects are not all there. NotFound when `local` has no such key.
base::Status push_to_s3(const ArtifactStore& local, const std::string& key, S3Client& s3);

// Downloads key's manifest and the objects `local` lacks into `local`, checking each object's
// sha256 (DataLoss naming the object on a mismatch); the manifest is written last. NotFound when
// the bucket has no such manifest.
base::Status pull_from_s3(S3Client& s3, const std::string& key, ArtifactStore& local);

// The manifest saved under `key` in the bucket, or nullopt when there is none; DataLoss naming its
// s3:// URI when it cannot be parsed.
base::Result<std::optional<ArtifactManifest>> s3_manifest(S3Client& s3, const std::string& key);

}  // namespace sdstack::flow
