// The local artifact store: a run's declared paths saved by content (each file once), restored into later runs.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace sdstack::flow {

struct ArtifactEntry {
  enum class Type { kFile, kDirectory, kSymlink };
  std::string path;  // relative to the working dir, '/'-separated, normalised: "output/0.png" (no "./")
  Type type = Type::kFile;
  uint32_t mode = 0;        // permission bits (07777 mask)
  int64_t size = 0;         // files
  std::string sha256;       // files: hex digest, which is also the object's name
  std::string link_target;  // symlinks: the link's text, unresolved
};

// "file", "directory", "symlink": as manifests spell them.
std::string_view artifact_type_name(ArtifactEntry::Type type);

struct ArtifactManifest {
  std::string key;                     // what it was saved under
  std::vector<std::string> declared;   // the declared paths, normalised
  std::vector<std::string> missing;    // declared paths that did not exist when saved
  std::vector<ArtifactEntry> entries;  // sorted by path; a directory precedes its contents
  int64_t total_bytes = 0;             // sum of file sizes
  int64_t saved_ms = 0;                // when it was saved, ms since the Unix epoch
};

// A declared artifact path in the form manifests keep: "./models/" -> "models", "a//./b" -> "a/b",
// "." or "./" -> "." (the whole working dir). Absolute paths, paths with a ".." part and "" are
// InvalidArgument naming the path.
base::Result<std::string> normalise_artifact_path(const std::string& path);

// Checks a store key: a relative path like "<repo-id>/<run-name>" of [A-Za-z0-9._-] parts joined
// by '/', none of them empty, "." or "..". InvalidArgument naming the key otherwise.
base::Status check_artifact_key(const std::string& key);

// A manifest as its JSON file holds it (the text save() writes), and the reverse. The parser checks
// what manifest() checks: bad JSON or impossible entries are DataLoss naming `source` (a file, an
// s3:// URI); the key is the caller's (where the manifest was found), not the text's.
std::string artifact_manifest_json(const ArtifactManifest& manifest);
base::Result<ArtifactManifest> parse_artifact_manifest(const std::string& text, const std::string& source,
                                                       const std::string& key);

// A store of run artifacts in a folder under ~/.sdstack/ (the caller picks which):
//   objects/sha256/<2 hex>/<64 hex>  file contents, named by their digest, read-only (0444)
//   manifests/<key>.json             which paths a run saved and which objects hold its files
//   tmp/                             objects being written
//   lock                             flock()ed shared by save/restore/push, exclusively by gc
// Objects are written to a temporary name, flushed and renamed; a manifest is written last,
// atomically, so a reader sees a key's previous artifacts or all of its new ones, never part.
// Safe to use from several threads and processes at once: gc() waits until saves, restores and
// pushes in progress are done, so it never deletes an object one of them has counted on.
class ArtifactStore {
 public:
  // Nothing is touched until the first call; `root` is created by the first save().
  explicit ArtifactStore(std::string root);

  // Saves the declared `paths` (relative to `work_dir`) under `key`, replacing an earlier manifest
  // of that key atomically, and returns the manifest written. Directories are walked recursively;
  // symlinks are recorded as links, never followed, dangling ones too; fifos, sockets and devices
  // are skipped. Each file is read once, hashed as it is copied to a temporary object; when the
  // store already holds an object with that digest the copy is dropped, so identical files are
  // stored once. A declared path that does not exist goes to `missing` (a stopped run may not have
  // made it yet). Errors: a bad key, an absolute path, one with "..", or one that goes through a
  // symlink ("models/sd" where models is a link) is InvalidArgument naming it; a file that cannot
  // be read or stored is IoError naming the artifact path. On any error no manifest is written:
  // the key keeps its previous one, if any.
  base::Result<ArtifactManifest> save(const std::string& key, const std::string& work_dir,
                                      const std::vector<std::string>& paths);

  // The manifest saved under `key`, or nullopt when there is none. A manifest that cannot be
  // parsed or holds impossible entries (a path with "..", an entry under a symlink, a bad digest)
  // is DataLoss naming its file.
  base::Result<std::optional<ArtifactManifest>> manifest(const std::string& key) const;

  // The keys that have a manifest, sorted; empty when nothing has been saved yet.
  base::Result<std::vector<std::string>> keys() const;

  // Recreates key's artifacts under `dest` (created if missing): directories with their modes,
  // symlinks with the same text, files with their modes, copied from the objects (a FICLONE reflink
  // where the file system has them, else a plain copy). Each file and link is made under a
  // temporary name and renamed into place, so no half-written file ever appears; whatever is at an
  // entry's path is replaced (a file where a directory was, and the reverse); other files under
  // `dest` are left alone. Each object's size is checked, and its sha256 too when `verify` is true:
  // a mismatch or a missing object is DataLoss naming the object and the artifact path, and that
  // file is not written. NotFound when `key` has no manifest.
  base::Status restore(const std::string& key, const std::string& dest, bool verify = false) const;

  // Deletes key's manifest; NotFound if it has none. Its objects stay until gc().
  base::Status remove(const std::string& key);

  // Deletes the objects that no manifest refers to, and temporary files left for more than an hour
  // by crashed saves; returns the bytes freed. A manifest that cannot be read stops it (DataLoss)
  // before anything is deleted, since its objects cannot be told apart from garbage.
  base::Result<int64_t> gc();

  // Copies key's manifest and the objects it needs into `other`, checking each object's digest on
  // the way (DataLoss on a mismatch); objects `other` already holds are not copied. The manifest is
  // written last, so `other` never holds a manifest whose objects are not all there. NotFound when
  // `key` has no manifest here.
  base::Status push(const std::string& key, ArtifactStore& other) const;

  // Writes the bytes of `entry`'s object (a file entry's) to the new file `path`; see import_manifest().
  using FetchObject = std::function<base::Status(const ArtifactEntry& entry, const std::string& path)>;

  // Adds `manifest`, saved elsewhere (another store, an S3 bucket named by `source`), under
  // manifest.key, fetching the objects this store lacks with `fetch`, each once, into a temporary
  // file under tmp/. A fetched object's size and sha256 are checked before it is renamed into
  // place: a mismatch is DataLoss naming `source`, the object and its artifact path, and nothing of
  // it is kept. The manifest is written last, and only when every object is there. The store's
  // shared lock is held throughout, so gc() cannot delete objects fetched for a manifest not yet
  // written. Returns how many objects were fetched.
  base::Result<int64_t> import_manifest(const ArtifactManifest& manifest, const std::string& source,
                                        const FetchObject& fetch);

  // Runs `work` holding the store's shared lock, as save(), restore() and push() do: gc() waits
  // until it returns, so the objects of the manifests `work` reads stay (for copying them out).
  base::Status with_shared_lock(const std::function<base::Status()>& work) const;

  // Where the object with this digest lives (whether or not it exists).
  std::string object_path(const std::string& sha256) const;
  // Where key's manifest lives (whether or not it exists).
  std::string manifest_path(const std::string& key) const;
  const std::string& root() const { return root_; }

 private:
  std::string root_;
};

}  // namespace sdstack::flow
