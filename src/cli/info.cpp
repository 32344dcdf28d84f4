// netblk info: qemu-img info's facts and field names, human or JSON.
#include <iostream>

#include "cli/verbs.hpp"
#include "core/text.hpp"
#include "spec/uri.hpp"

namespace netblk::cli {
namespace {

// The node whose facts `info` shows: filters (copy-on-read) are looked through.
const Node& shown(const Node& node) {
  const Node* n = &node;
  while (n->is_filter() && n->file()) n = n->file();
  return *n;
}

Json image_info(const Node& node) {
  const ImageInfo info = node.image_info();
  Json j;
  j["virtual-size"] = node.size();
  j["filename"] = canonical_name(node);
  j["format"] = std::string(node.driver());
  if (info.allocated_bytes >= 0) j["actual-size"] = info.allocated_bytes;
  if (info.cluster_size) j["cluster-size"] = info.cluster_size;
  if (!info.backing_filename.empty()) {
    // The name is the image's, not the user's: it may carry a password (as QEMU wrote it).
    j["backing-filename"] = spec::redact_password(info.backing_filename);
    if (node.backing()) j["full-backing-filename"] = canonical_name(*node.backing());
    if (!info.backing_format.empty()) j["backing-filename-format"] = info.backing_format;
  }
  if (!info.format_specific.is_null())
    j["format-specific"] = Json{{"type", std::string(node.driver())}, {"data", info.format_specific}};
  j["dirty-flag"] = info.dirty;
  return j;
}

std::string human_key(std::string key) {
  for (auto& c : key)
    if (c == '-') c = ' ';
  return key;
}

void print_specific(std::ostream& out, const Json& data, int indent) {
  for (auto it = data.begin(); it != data.end(); ++it) {
    out << std::string(indent, ' ') << human_key(it.key()) << ":";
    if (it->is_object()) {
      out << "\n";
      print_specific(out, *it, indent + 4);
    } else if (it->is_string()) {
      out << " " << it->get<std::string>() << "\n";
    } else {
      out << " " << it->dump() << "\n";
    }
  }
}

void print_human(std::ostream& out, const Json& j) {
  out << "image: " << j["filename"].get<std::string>() << "\n";
  out << "file format: " << j["format"].get<std::string>() << "\n";
  std::uint64_t size = j["virtual-size"];
  out << "virtual size: " << human_size(size) << " (" << size << " bytes)\n";
  out << "disk size: " << (j.contains("actual-size") ? human_size(j["actual-size"].get<std::uint64_t>()) : "unavailable")
      << "\n";
  if (j.contains("cluster-size")) out << "cluster_size: " << j["cluster-size"].get<std::uint64_t>() << "\n";
  if (j.contains("backing-filename")) {
    std::string b = j["backing-filename"];
    out << "backing file: " << b;
    if (j.contains("full-backing-filename") && j["full-backing-filename"] != b)
      out << " (actual path: " << j["full-backing-filename"].get<std::string>() << ")";
    out << "\n";
    if (j.contains("backing-filename-format"))
      out << "backing file format: " << j["backing-filename-format"].get<std::string>() << "\n";
  }
  if (j.contains("format-specific")) {
    out << "Format specific information:\n";
    print_specific(out, j["format-specific"]["data"], 4);
  }
}

const VerbRegistration kInfo{Verb{
    "info", "Show facts about a disk image (qemu-img info)", [](CLI::App& app) {
      auto drive = std::make_shared<DriveArgs>();
      auto output = std::make_shared<std::string>("human");
      auto chain = std::make_shared<bool>(false);
      auto objects = std::make_shared<std::vector<std::string>>();
      drive->add_options(app);
      add_common_options(app, *objects, &drive->force_share);
      app.add_option("--output", *output, "Output format")->check(CLI::IsMember({"human", "json"}));
      app.add_flag("--backing-chain", *chain, "Show every image of the backing chain");
      app.add_option("filename", drive->name, "Image name: path, URL or json:{...}");
      return [=]() {
        return run_verb([=]() -> Task<int> {
          define_objects(*objects);
          DriveSpec spec = drive->spec(true);
          // As qemu-img info: no data is read, so no consistent read is asked for.
          spec.permissions = Permissions{0, kPermAll};
          auto node = co_await open_drive(spec);
          Json all = Json::array();
          // A remote backing file is opened only for --backing-chain; one that cannot be
          // reached ends the chain shown, and the verb fails naming it.
          std::string unreachable;
          for (Node* n = node.get(); n;) {
            Node& layer = const_cast<Node&>(shown(*n));
            all.push_back(image_info(layer));
            n = nullptr;
            if (!*chain || !layer.has_backing()) break;
            try {
              n = co_await layer.open_backing();
            } catch (const Error& e) {
              unreachable = e.what();
            }
          }
          co_await node->close();
          if (*output == "json") {
            std::cout << (*chain ? all : all[0]).dump(4) << std::endl;
          } else {
            for (std::size_t i = 0; i < all.size(); ++i) {
              if (i) std::cout << "\n";
              print_human(std::cout, all[i]);
            }
          }
          if (!unreachable.empty()) {
            std::cout.flush();
            print_error(unreachable);
            co_return 1;
          }
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
