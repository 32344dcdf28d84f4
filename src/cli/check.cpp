// netblk check: qemu-img check's report, repair and exit codes (0 clean, 1 check not
// completed, 2 corruptions, 3 leaks; 63 for formats without checks).
#include <cstdio>
#include <iostream>

#include "cli/verbs.hpp"

namespace netblk::cli {
namespace {

void print_human(const CheckResult& c) {
  if (!(c.corruptions || c.leaks || c.check_errors)) {
    std::printf("No errors were found on the image.\n");
  } else {
    if (c.corruptions)
      std::printf("\n%lld errors were found on the image.\nData may be corrupted, or further writes to the image "
                  "may corrupt it.\n",
                  static_cast<long long>(c.corruptions));
    if (c.leaks)
      std::printf("\n%lld leaked clusters were found on the image.\nThis means waste of disk space, but no harm to "
                  "data.\n",
                  static_cast<long long>(c.leaks));
    if (c.check_errors)
      std::printf("\n%lld internal errors have occurred during the check.\n", static_cast<long long>(c.check_errors));
  }
  if (c.total_clusters && c.allocated_clusters)
    std::printf("%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                static_cast<unsigned long long>(c.allocated_clusters), static_cast<unsigned long long>(c.total_clusters),
                c.allocated_clusters * 100.0 / c.total_clusters, c.fragmented_clusters * 100.0 / c.allocated_clusters,
                c.compressed_clusters * 100.0 / c.allocated_clusters);
  if (c.image_end_offset) std::printf("Image end offset: %llu\n", static_cast<unsigned long long>(c.image_end_offset));
  std::fflush(stdout);
}

Json to_json(const CheckResult& c, std::int64_t leaks_fixed, std::int64_t corruptions_fixed,
             const std::string& filename) {
  Json j = Json::object();
  if (c.image_end_offset) j["image-end-offset"] = c.image_end_offset;
  j["total-clusters"] = c.total_clusters;
  if (c.corruptions) j["corruptions"] = c.corruptions;
  j["check-errors"] = c.check_errors;
  if (c.leaks) j["leaks"] = c.leaks;
  if (corruptions_fixed) j["corruptions-fixed"] = corruptions_fixed;
  if (leaks_fixed) j["leaks-fixed"] = leaks_fixed;
  j["allocated-clusters"] = c.allocated_clusters;
  if (c.fragmented_clusters) j["fragmented-clusters"] = c.fragmented_clusters;
  if (c.compressed_clusters) j["compressed-clusters"] = c.compressed_clusters;
  j["filename"] = filename;
  j["format"] = "qcow2";
  return j;
}

const VerbRegistration kCheck{Verb{
    "check", "Check an image for consistency, optionally repair it (qemu-img check)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string repair, output = "human";
        std::vector<std::string> objects;
        bool quiet = false;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects, &a->drive.force_share);
      app.add_option("-r", a->repair, "Repair: leaks or all")->check(CLI::IsMember({"leaks", "all"}));
      app.add_option("--output", a->output, "Output format")->check(CLI::IsMember({"human", "json"}));
      app.add_flag("-q,--quiet", a->quiet, "Print nothing but errors");
      app.add_option("filename", a->drive.name, "The image");
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          const unsigned fix = a->repair == "leaks" ? kFixLeaks
                               : a->repair == "all" ? (kFixLeaks | kFixErrors)
                                                    : 0;
          auto node = co_await open_drive(a->drive.spec(fix == 0));
          Node* q = node.get();  // filters pass check() through to what they filter
          if (!q->supports_check()) {
            co_await node->close();
            print_error("This image format does not support checks");
            co_return 63;
          }
          const std::string filename = a->drive.name.empty() ? canonical_name(*node) : a->drive.name;
          CheckResult result = co_await q->check(fix);
          for (const auto& m : result.messages) std::cerr << m << "\n";
          std::int64_t leaks_fixed = result.leaks_fixed, corruptions_fixed = result.corruptions_fixed;
          if (leaks_fixed || corruptions_fixed) {
            // As qemu-img: report the repairs, then check the repaired image again.
            if (a->output == "human" && !a->quiet)
              std::printf("The following inconsistencies were found and repaired:\n\n    %lld leaked clusters\n    %lld "
                          "corruptions\n\nDouble checking the fixed image now...\n",
                          static_cast<long long>(leaks_fixed), static_cast<long long>(corruptions_fixed));
            result = co_await q->check(0);
            for (const auto& m : result.messages) std::cerr << m << "\n";
          }
          co_await node->close();
          if (a->output == "json") std::cout << to_json(result, leaks_fixed, corruptions_fixed, filename).dump(4) << std::endl;
          else if (!a->quiet) print_human(result);
          if (result.check_errors) co_return 1;
          if (result.corruptions) co_return 2;
          if (result.leaks) co_return 3;
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
