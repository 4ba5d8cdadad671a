// The S3 client's pieces that need no server: ListObjectsV2 and error documents, entities, URLs,
// credentials, and the artifact store's import_manifest() that pull_from_s3 is built on.
#include "flow/s3.h"

#include <cstdlib>
#include <filesystem>

#include "base/file.h"
#include "base/sha256.h"
#include "testing/testing.h"

namespace sdstack::flow {
namespace {

// Sets (or, with nullptr, unsets) an environment variable for one test and puts it back after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) old_ = old;
    had_ = old != nullptr;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      ::setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

// No AWS variables from the machine running the tests.
struct CleanAwsEnv {
  ScopedEnv access{"AWS_ACCESS_KEY_ID", nullptr};
  ScopedEnv secret{"AWS_SECRET_ACCESS_KEY", nullptr};
  ScopedEnv file{"AWS_SHARED_CREDENTIALS_FILE", nullptr};
  ScopedEnv profile{"AWS_PROFILE", nullptr};
};

TEST(S3XmlTest, UnescapesNamedAndNumericEntities) {
  EXPECT_EQ(xml_unescape("a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos;"), "a & b <c> \"d\" 'e'");
  EXPECT_EQ(xml_unescape("&#65;&#x42;&#X43;"), "ABC");
  EXPECT_EQ(xml_unescape("caf&#xE9; &#x1F600;"), "caf\xC3\xA9 \xF0\x9F\x98\x80");
  // Not entities: kept as they are.
  EXPECT_EQ(xml_unescape("AT&T & &bogus; &#xZZ; &"), "AT&T & &bogus; &#xZZ; &");
  EXPECT_EQ(xml_unescape("&amp;lt;"), "&lt;");  // one level only
}

TEST(S3XmlTest, ParsesAListPageWithEntitiesInKeys) {
  const std::string xml = R"(<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name><Prefix>sdstack/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys>
  <IsTruncated>false</IsTruncated>
  <Contents><Key>sdstack/a&amp;b.txt</Key><LastModified>2023-01-01T00:00:00.000Z</LastModified>
    <ETag>&quot;abc&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>sdstack/&lt;odd&gt; name</Key><Size>0</Size></Contents>
  <Contents>
    <Key>sdstack/manifests/r/1.json</Key><Size>10</Size>
  </Contents>
</ListBucketResult>)";
  auto page = parse_s3_list_page(xml, "s3://bucket/sdstack/");
  ASSERT_TRUE(page.is_ok()) << page.status().message();
  EXPECT_EQ(page->keys,
            (std::vector<std::string>{"sdstack/a&b.txt", "sdstack/<odd> name", "sdstack/manifests/r/1.json"}));
  EXPECT_FALSE(page->truncated);
  EXPECT_EQ(page->next_continuation_token, "");
}

TEST(S3XmlTest, ParsesATruncatedPage) {
  const std::string xml =
      "<ListBucketResult><KeyCount>1</KeyCount><IsTruncated>true</IsTruncated>"
      "<ContinuationToken>old</ContinuationToken>"
      "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=&amp;x</NextContinuationToken>"
      "<Contents><Key>k1</Key></Contents></ListBucketResult>";
  auto page = parse_s3_list_page(xml, "s3://b/");
  ASSERT_TRUE(page.is_ok()) << page.status().message();
  EXPECT_EQ(page->keys, std::vector<std::string>{"k1"});
  EXPECT_TRUE(page->truncated);
  EXPECT_EQ(page->next_continuation_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=&x");
}

TEST(S3XmlTest, EmptyListAndSelfClosingElements) {
  auto page = parse_s3_list_page(
      "<ListBucketResult><Name>b</Name><Prefix/><KeyCount>0</KeyCount>"
      "<IsTruncated>false</IsTruncated></ListBucketResult>",
      "s3://b/");
  ASSERT_TRUE(page.is_ok()) << page.status().message();
  EXPECT_TRUE(page->keys.empty());
  EXPECT_FALSE(page->truncated);
}

TEST(S3XmlTest, RefusesWhatIsNotAListPage) {
  auto error_document = parse_s3_list_page("<Error><Code>AccessDenied</Code></Error>", "s3://b/x (list)");
  ASSERT_FALSE(error_document.is_ok());
  EXPECT_EQ(error_document.status().code(), base::StatusCode::kDataLoss);
  EXPECT_EQ(error_document.status().message(),
            "s3://b/x (list): not a ListObjectsV2 answer: no <ListBucketResult> element");

  auto no_token = parse_s3_list_page(
      "<ListBucketResult><IsTruncated>true</IsTruncated>"
      "<Contents><Key>a</Key></Contents></ListBucketResult>",
      "s3://b/");
  ASSERT_FALSE(no_token.is_ok());
  EXPECT_EQ(no_token.status().message(),
            "s3://b/: not a ListObjectsV2 answer: truncated, but without a <NextContinuationToken>");
}

TEST(S3XmlTest, ParsesErrorDocuments) {
  const S3ErrorDocument error = parse_s3_error(R"(<?xml version='1.0' encoding='UTF-8'?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided. Check your key &amp; signing method.</Message><AWSAccessKeyId>test:tester</AWSAccessKeyId><RequestId>tx1</RequestId></Error>)");
  EXPECT_EQ(error.code, "SignatureDoesNotMatch");
  EXPECT_EQ(error.message,
            "The request signature we calculated does not match the signature you provided. Check your key & "
            "signing method.");
  const S3ErrorDocument none = parse_s3_error("<html>502 Bad Gateway</html>");
  EXPECT_EQ(none.code, "");
  EXPECT_EQ(none.message, "");
  EXPECT_EQ(parse_s3_error("").code, "");
}

TEST(S3UrlTest, EncodesLikeAws) {
  EXPECT_EQ(s3_uri_encode("a-b_c.d~e", false), "a-b_c.d~e");
  EXPECT_EQ(s3_uri_encode("sdstack/objects/", false), "sdstack%2Fobjects%2F");
  EXPECT_EQ(s3_uri_encode("sdstack/objects/", true), "sdstack/objects/");
  EXPECT_EQ(s3_uri_encode("a b+c=d&e\xC3\xA9", true), "a%20b%2Bc%3Dd%26e%C3%A9");
}

TEST(S3UrlTest, PathStyle) {
  S3Config config;
  config.endpoint = "http://127.0.0.1:8080/";
  config.bucket = "artifacts";
  config.prefix = "sdstack/";
  EXPECT_EQ(s3_url(config, "objects/sha256/ab/abcd"), "http://127.0.0.1:8080/artifacts/sdstack/objects/sha256/ab/abcd");
  EXPECT_EQ(s3_url(config, "manifests/repo/run 1.json"),
            "http://127.0.0.1:8080/artifacts/sdstack/manifests/repo/run%201.json");
  EXPECT_EQ(s3_url(config, ""), "http://127.0.0.1:8080/artifacts");
  EXPECT_EQ(s3_url(config, "", "list-type=2&max-keys=5&prefix=sdstack%2F"),
            "http://127.0.0.1:8080/artifacts?list-type=2&max-keys=5&prefix=sdstack%2F");
}

TEST(S3UrlTest, VirtualHostStyle) {
  S3Config config;
  config.endpoint = "https://s3.eu-west-1.amazonaws.com";
  config.bucket = "artifacts";
  config.path_style = false;
  EXPECT_EQ(s3_url(config, "objects/sha256/ab/abcd"),
            "https://artifacts.s3.eu-west-1.amazonaws.com/objects/sha256/ab/abcd");
  EXPECT_EQ(s3_url(config, ""), "https://artifacts.s3.eu-west-1.amazonaws.com/");
  EXPECT_EQ(s3_url(config, "", "list-type=2"), "https://artifacts.s3.eu-west-1.amazonaws.com/?list-type=2");
}

TEST(S3UrlTest, StoreLayoutMirrorsTheLocalStore) {
  const std::string digest(64, 'a');
  EXPECT_EQ(s3_object_key(digest), "objects/sha256/aa/" + digest);
  EXPECT_EQ(s3_manifest_key("repo/run-1"), "manifests/repo/run-1.json");
  S3Config config;
  config.bucket = "b";
  config.prefix = "p/";
  S3Client client(config);
  EXPECT_EQ(client.uri(s3_manifest_key("r")), "s3://b/p/manifests/r.json");
}

TEST(S3CredentialsTest, KeepsGivenKeys) {
  CleanAwsEnv clean;
  ScopedEnv access("AWS_ACCESS_KEY_ID", "from-env");
  ScopedEnv secret("AWS_SECRET_ACCESS_KEY", "env-secret");
  S3Config config;
  config.access_key = "given";
  config.secret_key = "given-secret";
  ASSERT_TRUE(load_s3_credentials(config, "/nonexistent", "").is_ok());
  EXPECT_EQ(config.access_key, "given");
  EXPECT_EQ(config.secret_key, "given-secret");
}

TEST(S3CredentialsTest, FromTheEnvironment) {
  CleanAwsEnv clean;
  ScopedEnv access("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE");
  ScopedEnv secret("AWS_SECRET_ACCESS_KEY", "env-secret");
  S3Config config;
  ASSERT_TRUE(load_s3_credentials(config, "/nonexistent", "").is_ok());
  EXPECT_EQ(config.access_key, "AKIAEXAMPLE");
  EXPECT_EQ(config.secret_key, "env-secret");
}

TEST(S3CredentialsTest, FromAnIniFileProfile) {
  CleanAwsEnv clean;
  testing::TempDir dir;
  const std::string file = dir.file("credentials");
  testing::write_text_file(file,
                           "# a comment\n"
                           "[default]\n"
                           "aws_access_key_id = default-key\n"
                           "aws_secret_access_key = default-secret\n"
                           "\n"
                           "[ci]\n"
                           "  aws_access_key_id=test:tester  \n"
                           "; another comment\n"
                           "aws_secret_access_key = se=cret \n"
                           "region = us-east-1\n");
  S3Config config;
  ASSERT_TRUE(load_s3_credentials(config, file, "ci").is_ok());
  EXPECT_EQ(config.access_key, "test:tester");
  EXPECT_EQ(config.secret_key, "se=cret");

  S3Config by_default;
  ASSERT_TRUE(load_s3_credentials(by_default, file, "").is_ok());
  EXPECT_EQ(by_default.access_key, "default-key");

  ScopedEnv profile("AWS_PROFILE", "ci");
  S3Config from_aws_profile;
  ASSERT_TRUE(load_s3_credentials(from_aws_profile, file, "").is_ok());
  EXPECT_EQ(from_aws_profile.access_key, "test:tester");
}

TEST(S3CredentialsTest, MissingCredentialsNameBothPlaces) {
  CleanAwsEnv clean;
  testing::TempDir dir;
  S3Config config;
  config.bucket = "artifacts";
  const std::string missing_file = dir.file("credentials");
  base::Status status = load_s3_credentials(config, missing_file, "ci");
  ASSERT_FALSE(status.is_ok());
  EXPECT_EQ(status.code(), base::StatusCode::kNotFound);
  EXPECT_EQ(status.message(),
            "no S3 credentials for s3://artifacts: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and " +
                missing_file +
                " cannot be read (No such file or directory); set both variables, or write the keys "
                "aws_access_key_id and aws_secret_access_key under [ci] in " +
                missing_file);

  testing::write_text_file(missing_file,
                           "[default]\naws_access_key_id = k\naws_secret_access_key = TOPSECRET\n"
                           "[other]\naws_access_key_id = k\n");
  ScopedEnv access("AWS_ACCESS_KEY_ID", "only-the-id");
  status = load_s3_credentials(config, missing_file, "ci");
  ASSERT_FALSE(status.is_ok());
  EXPECT_NE(status.message().find("AWS_SECRET_ACCESS_KEY is not set (AWS_ACCESS_KEY_ID is)"), std::string::npos)
      << status.message();
  EXPECT_NE(status.message().find(missing_file + " has no [ci] profile (it has: [default] [other])"), std::string::npos)
      << status.message();
  EXPECT_EQ(status.message().find("TOPSECRET"), std::string::npos);
  EXPECT_EQ(status.message().find("only-the-id"), std::string::npos);

  status = load_s3_credentials(config, missing_file, "other");
  ASSERT_FALSE(status.is_ok());
  EXPECT_NE(status.message().find("[other] profile lacks aws_access_key_id or aws_secret_access_key"),
            std::string::npos)
      << status.message();
}

TEST(S3ClientTest, ConnectionRefusedNamesTheObjectAndTheEndpoint) {
  S3Config config;
  config.endpoint = "http://127.0.0.1:9";  // the discard port: nothing listens there on a test machine
  config.bucket = "artifacts";
  config.access_key = "AKIAEXAMPLE";
  config.secret_key = "TOPSECRET";
  S3Client client(config);
  auto size = client.head("objects/sha256/ab/abcd");
  ASSERT_FALSE(size.is_ok());
  EXPECT_EQ(size.status().code(), base::StatusCode::kIoError);
  const std::string& message = size.status().message();
  EXPECT_EQ(message.rfind("s3://artifacts/objects/sha256/ab/abcd: HEAD failed: ", 0), 0u) << message;
  EXPECT_NE(message.find("(tried 4 times); check the endpoint http://127.0.0.1:9: is the S3 server running there?"),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find("TOPSECRET"), std::string::npos);
  EXPECT_EQ(client.stats().requests, 4);
}

TEST(S3ClientTest, RefusesToSendUnsignedRequests) {
  S3Config config;
  config.endpoint = "http://127.0.0.1:9";
  config.bucket = "artifacts";
  S3Client client(config);
  auto data = client.get_data("k");
  ASSERT_FALSE(data.is_ok());
  EXPECT_EQ(data.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_EQ(data.status().message(),
            "s3://artifacts/k: GET: no S3 credentials are set (load_s3_credentials() finds them in AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)");
  EXPECT_EQ(client.stats().requests, 0);
}

// pull_from_s3 is import_manifest() with an S3 fetch; here the fetch copies from another store.
TEST(ArtifactStoreImportTest, FetchesMissingObjectsChecksThemAndWritesTheManifestLast) {
  testing::TempDir dir;
  testing::write_text_file(dir.file("work/a.txt"), "alpha");
  testing::write_text_file(dir.file("work/b.txt"), "beta");
  ArtifactStore source(dir.file("source"));
  auto saved = source.save("repo/run", dir.file("work"), {"a.txt", "b.txt"});
  ASSERT_TRUE(saved.is_ok()) << saved.status().message();

  ArtifactStore local(dir.file("local"));
  int calls = 0;
  auto copy = [&](const ArtifactEntry& entry, const std::string& path) {
    ++calls;
    std::error_code error;
    std::filesystem::copy_file(source.object_path(entry.sha256), path, error);
    return error ? base::io_error(path + ": " + error.message()) : base::Status::ok();
  };
  auto fetched = local.import_manifest(*saved, "elsewhere", copy);
  ASSERT_TRUE(fetched.is_ok()) << fetched.status().message();
  EXPECT_EQ(*fetched, 2);
  auto manifest = local.manifest("repo/run");
  ASSERT_TRUE(manifest.is_ok() && manifest->has_value());
  EXPECT_EQ(artifact_manifest_json(**manifest), artifact_manifest_json(*saved));
  ASSERT_TRUE(local.restore("repo/run", dir.file("out"), /*verify=*/true).is_ok());
  EXPECT_EQ(*base::read_file(dir.file("out/b.txt")), "beta");

  // Again: everything is there, nothing is fetched.
  calls = 0;
  fetched = local.import_manifest(*saved, "elsewhere", copy);
  ASSERT_TRUE(fetched.is_ok());
  EXPECT_EQ(*fetched, 0);
  EXPECT_EQ(calls, 0);

  // A fetch that brings the wrong bytes: DataLoss naming the object, no manifest, nothing kept.
  ArtifactStore fresh(dir.file("fresh"));
  auto corrupt = [&](const ArtifactEntry&, const std::string& path) {
    testing::write_text_file(path, "not what was saved");
    return base::Status::ok();
  };
  auto bad = fresh.import_manifest(*saved, "s3://b/", corrupt);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), base::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("object " + saved->entries[0].sha256 +
                                        " from s3://b/ (artifact 'a.txt' of "
                                        "'repo/run'): object is corrupt"),
            std::string::npos)
      << bad.status().message();
  auto none = fresh.manifest("repo/run");
  ASSERT_TRUE(none.is_ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_TRUE(std::filesystem::is_empty(dir.file("fresh/tmp")));
  EXPECT_FALSE(base::file_exists(fresh.object_path(saved->entries[0].sha256)));
}

TEST(ArtifactStoreImportTest, RefusesAManifestWithABadDigest) {
  testing::TempDir dir;
  ArtifactManifest manifest;
  manifest.key = "repo/run";
  ArtifactEntry entry;
  entry.path = "a.txt";
  entry.sha256 = "../../../etc/passwd";
  manifest.entries.push_back(entry);
  ArtifactStore local(dir.file("local"));
  auto fetched = local.import_manifest(manifest, "s3://b/",
                                       [](const ArtifactEntry&, const std::string&) { return base::Status::ok(); });
  ASSERT_FALSE(fetched.is_ok());
  EXPECT_EQ(fetched.status().message(), "s3://b/: corrupt artifact manifest: 'a.txt' has a bad sha256 or size");
}

}  // namespace
}  // namespace sdstack::flow
