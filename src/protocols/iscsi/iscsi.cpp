// The iSCSI protocol driver: iscsi:// (and iser://) URLs or driver=iscsi with QEMU's
// options, through libiscsi driven from the event loop (session.hpp).
//
// Open: connect, log in and check the LUN (TEST UNIT READY), INQUIRY (peripheral type: a
// disk, or a CD-ROM, read-only), READ CAPACITY(16) with a fall-back to (10), the block
// limits and logical block provisioning VPD pages, MODE SENSE(6) for write protection and
// DPOFUA. Then READ/WRITE(16) (10 when READ CAPACITY(16) is not there) with FUA when DPOFUA
// says so, SYNCHRONIZE CACHE, UNMAP when LBPU, WRITE SAME(16) for zeroes (with UNMAP when
// LBPWS and the caller allows it), GET LBA STATUS for block status when LBPME. The LUN's
// block size is the node's request alignment; block/ aligns, splits and emulates the rest.
#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "block/driver.hpp"
#include "core/log.hpp"
#include "protocols/iscsi/iscsi_config.hpp"
#include "protocols/iscsi/session.hpp"

namespace netblk::iscsi {
namespace {

// Largest READ/WRITE we send (the target's block limits may say less).
constexpr std::uint64_t kMaxTransfer = 16u << 20;
// Largest WRITE SAME / UNMAP when the target names no limit.
constexpr std::uint64_t kMaxRanged = 1u << 30;
// WRITE SAME's one block of zeroes: read-only for libiscsi, shared by every command.
constexpr std::size_t kZeroBlockMax = 64u << 10;
const std::array<unsigned char, kZeroBlockMax> kZeroBlock{};

// What the open learnt of the LUN.
struct LunFacts {
  int device_type = 0;
  std::uint32_t block_size = 512;
  std::uint64_t blocks = 0;
  bool use16 = false;  // READ CAPACITY(16) worked: READ/WRITE(16)
  bool lbpme = false, lbprz = false;
  bool lbpu = false, lbpws = false;
  bool write_protected = false, dpofua = false;
  std::uint64_t max_xfer_blocks = 0, max_unmap_blocks = 0, max_ws_blocks = 0;
};

class IscsiNode : public Node {
 public:
  IscsiNode(const OpenContext& ctx, std::shared_ptr<Session> session, const LunFacts& facts)
      : Node(ctx.executor), session_(std::move(session)), facts_(facts), no_flush_(ctx.cache_no_flush) {
    const std::uint32_t bs = facts_.block_size;
    size_ = facts_.blocks * bs;
    limits_.request_alignment = bs;
    limits_.preferred_alignment = std::max<std::uint32_t>(bs, 4096);
    std::uint64_t xfer = kMaxTransfer;
    if (facts_.max_xfer_blocks) xfer = std::min<std::uint64_t>(xfer, facts_.max_xfer_blocks * bs);
    if (!facts_.use16) xfer = std::min<std::uint64_t>(xfer, 0xffffull * bs);  // READ(10)'s 16-bit count
    limits_.max_transfer = std::max<std::uint64_t>(bs, xfer - xfer % bs);
    const auto ranged = [bs](std::uint64_t blocks) {
      std::uint64_t n = blocks && blocks != 0xffffffffu ? blocks * bs : kMaxRanged;
      n = std::min(n, kMaxRanged);
      return std::max<std::uint64_t>(bs, n - n % bs);
    };
    limits_.max_discard = ranged(facts_.max_unmap_blocks);
    limits_.max_zero = ranged(facts_.max_ws_blocks);
    caps_.read_only = ctx.read_only;
    caps_.can_flush = !ctx.read_only;
    caps_.can_fua = !ctx.read_only && facts_.dpofua && !no_flush_;
    // WRITE SAME(16) zeroes without sending them (QEMU tries it on every disk); with UNMAP
    // only when LBPWS says the target frees blocks so.
    caps_.can_zero = !ctx.read_only && facts_.device_type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS &&
                     bs <= kZeroBlockMax;
    caps_.can_discard = !ctx.read_only && facts_.lbpu;
    caps_.has_block_status = facts_.lbpme;
  }

  std::string_view driver() const override { return "iscsi"; }
  Json options() const override { return canonical_options(session_->config()); }
  std::string plain_filename() const override { return iscsi::plain_filename(session_->config()); }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    const std::uint64_t lba = offset / facts_.block_size;
    const auto len = static_cast<std::uint32_t>(buf.size());
    const int bs = static_cast<int>(facts_.block_size);
    const int lun = lun_number();
    Submit submit;
    if (facts_.use16)
      submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
        return iscsi_read16_task(c, lun, lba, len, bs, 0, 0, 0, 0, 0, cb, p);
      };
    else
      submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
        return iscsi_read10_task(c, lun, static_cast<std::uint32_t>(lba), len, bs, 0, 0, 0, 0, 0, cb, p);
      };
    const Payload into{.in = buf, .out = {}};
    co_await complete(std::move(submit), into, "read");
  }

  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override {
    const std::uint64_t lba = offset / facts_.block_size;
    const auto len = static_cast<std::uint32_t>(buf.size());
    const int bs = static_cast<int>(facts_.block_size);
    const int lun = lun_number();
    const int fua = (flags & kWriteFua) && caps().can_fua ? 1 : 0;
    Submit submit;
    if (facts_.use16)
      submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
        return iscsi_write16_task(c, lun, lba, nullptr, len, bs, 0, 0, fua, 0, 0, cb, p);
      };
    else
      submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
        return iscsi_write10_task(c, lun, static_cast<std::uint32_t>(lba), nullptr, len, bs, 0, 0, fua, 0, 0, cb, p);
      };
    const Payload from{.in = {}, .out = buf};
    co_await complete(std::move(submit), from, "write");
  }

  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    if (!caps().can_zero || !write_same_works_) {
      co_await Node::co_write_zeroes(offset, length, flags);
      co_return;
    }
    const std::uint64_t lba = offset / facts_.block_size;
    const auto blocks = static_cast<std::uint32_t>(length / facts_.block_size);
    const auto bs = facts_.block_size;
    const int lun = lun_number();
    const int unmap = (flags & kZeroMayUnmap) && facts_.lbpws ? 1 : 0;
    Submit submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
      return iscsi_writesame16_task(c, lun, lba, const_cast<unsigned char*>(kZeroBlock.data()), bs, blocks, 0, unmap,
                                    0, 0, cb, p);
    };
    try {
      const Payload none{};
      co_await complete(std::move(submit), none, "write zeroes");
    } catch (const Error& e) {
      // A target that refuses WRITE SAME after all: zero with writes from now on.
      if (e.code() != EINVAL) throw;
      write_same_works_ = false;
      NETBLK_LOG(debug, "{}: WRITE SAME refused ({}); writing zeroes instead", display_name(), e.what());
    }
    if (!write_same_works_) co_await Node::co_write_zeroes(offset, length, flags);
    if ((flags & kWriteFua) && caps().can_fua) co_await co_flush();
  }

  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    if (!caps().can_discard) co_return;
    const std::uint64_t lba = offset / facts_.block_size;
    const auto blocks = static_cast<std::uint32_t>(length / facts_.block_size);
    const int lun = lun_number();
    Submit submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
      unmap_list one{lba, blocks};  // copied into the command by libiscsi
      return iscsi_unmap_task(c, lun, 0, 0, &one, 1, cb, p);
    };
    const Payload none{};
    co_await complete(std::move(submit), none, "discard");
    if ((flags & kWriteFua) && caps().can_fua) co_await co_flush();
  }

  Task<void> co_flush() override {
    if (!caps().can_flush || no_flush_) co_return;  // cache.no-flush (cache=unsafe)
    const int lun = lun_number();
    Submit submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
      return iscsi_synchronizecache10_task(c, lun, 0, 0, 0, 0, cb, p);
    };
    const Payload none{};
    co_await complete(std::move(submit), none, "flush");
  }

  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    const BlockStatus data{length, kStatusData | kStatusAllocated, offset};
    if (!caps().has_block_status || !lba_status_works_) co_return data;
    const std::uint32_t bs = facts_.block_size;
    const std::uint64_t lba = offset / bs;
    const int lun = lun_number();
    Submit submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
      return iscsi_get_lba_status_task(c, lun, lba, 8 + 16, cb, p);
    };
    scsi_task* raw = nullptr;
    const Payload none{};
    try {
      raw = co_await session_->run(std::move(submit), none, "block status");
    } catch (const Error& e) {
      if (e.code() != EINVAL) throw;
      lba_status_works_ = false;
      NETBLK_LOG(debug, "{}: GET LBA STATUS refused ({}); reporting data", display_name(), e.what());
    }
    if (!raw) co_return data;
    TaskPtr task(raw);
    auto* status = static_cast<scsi_get_lba_status*>(scsi_datain_unmarshall(task.get()));
    if (!status || status->num_descriptors == 0 || status->descriptors[0].lba != lba)
      throw Error(EIO, display_name() + ": block status: the target's answer does not start at the block asked for");
    const scsi_lba_status_descriptor& d = status->descriptors[0];
    BlockStatus out = data;
    if (d.num_blocks) out.length = std::min<std::uint64_t>(length, std::uint64_t{d.num_blocks} * bs);
    // An unmapped range reads as zeroes only when the target says so (LBPRZ); otherwise
    // its bytes are unknown and it stays data.
    const bool unmapped =
        d.provisioning == SCSI_PROVISIONING_TYPE_DEALLOCATED || d.provisioning == SCSI_PROVISIONING_TYPE_ANCHORED;
    if (unmapped && facts_.lbprz) out.flags = (out.flags & ~kStatusData) | kStatusZero;
    co_return out;
  }

  Task<void> co_close() override {
    session_->close();
    co_return;
  }

 private:
  int lun_number() const { return static_cast<int>(session_->config().lun); }

  Task<void> complete(Submit submit, Payload payload, const char* what) {
    scsi_task* raw = co_await session_->run(std::move(submit), payload, what);
    TaskPtr done(raw);
  }

  std::shared_ptr<Session> session_;
  LunFacts facts_;
  bool no_flush_;
  bool write_same_works_ = true;
  bool lba_status_works_ = true;
};

// One command of the open, whose answer `use` reads; errors other than EINVAL/ENOTSUP/EIO
// (the target does not know the command or page) are thrown.
template <class Use>
Task<bool> ask(Session& s, Submit submit, const char* what, Use use) {
  scsi_task* raw = nullptr;
  const Payload none{};
  try {
    raw = co_await s.run(std::move(submit), none, what);
  } catch (const Error& e) {
    if (e.code() == ETIMEDOUT || e.code() == ECONNREFUSED) throw;
    NETBLK_LOG(debug, "{}: {}: {}", s.name(), what, e.what());
  }
  if (!raw) co_return false;
  TaskPtr task(raw);
  void* data = scsi_datain_unmarshall(task.get());
  if (!data) co_return false;
  use(data);
  co_return true;
}

// INQUIRY of one VPD page, or of the standard data when `page` is negative.
Submit inquiry(int lun, int page) {
  return [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
    return iscsi_inquiry_task(c, lun, page >= 0 ? 1 : 0, page >= 0 ? page : 0, 255, cb, p);
  };
}

Task<LunFacts> probe_lun(Session& s, bool read_only) {
  LunFacts f;
  const int lun = static_cast<int>(s.config().lun);
  bool found = false;
  {
    Submit submit = inquiry(lun, -1);
    auto* type = &f.device_type;
    auto use = [type](void* d) { *type = static_cast<scsi_inquiry_standard*>(d)->device_type; };
    found = co_await ask(s, std::move(submit), "INQUIRY", use);
  }
  if (!found) throw Error(EIO, s.name() + ": INQUIRY failed");
  const bool disk = f.device_type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS;
  const bool cdrom = f.device_type == SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_MMC;
  if (!disk && !cdrom)
    throw Error(ENOTSUP, s.name() + ": the LUN is a " +
                             scsi_devtype_to_str(static_cast<scsi_inquiry_peripheral_device_type>(f.device_type)) +
                             " device, not a disk or CD-ROM");
  if (cdrom && !read_only)
    throw Error(EROFS, s.name() + ": the LUN is a CD-ROM: open it read-only (media=cdrom)");

  // Capacity: READ CAPACITY(16) on disks, (10) when that fails and on CD-ROMs.
  bool have_capacity = false;
  if (disk) {
    Submit submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
      return iscsi_readcapacity16_task(c, lun, cb, p);
    };
    auto use = [&f](void* d) {
      auto* rc = static_cast<scsi_readcapacity16*>(d);
      f.blocks = rc->returned_lba + 1;
      f.block_size = rc->block_length;
      f.lbpme = rc->lbpme;
      f.lbprz = rc->lbprz;
    };
    have_capacity = co_await ask(s, std::move(submit), "READ CAPACITY(16)", use);
    f.use16 = have_capacity;
  }
  if (!have_capacity) {
    Submit submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
      return iscsi_readcapacity10_task(c, lun, 0, 0, cb, p);
    };
    auto use = [&f](void* d) {
      auto* rc = static_cast<scsi_readcapacity10*>(d);
      f.blocks = std::uint64_t{rc->lba} + 1;
      f.block_size = rc->block_size;
    };
    have_capacity = co_await ask(s, std::move(submit), "READ CAPACITY(10)", use);
  }
  if (!have_capacity || f.block_size == 0 || f.block_size % 512 != 0 || f.block_size > (1u << 20))
    throw Error(EIO, s.name() + ": cannot read the LUN's capacity");

  // The VPD pages the target offers, then block limits and provisioning.
  std::vector<int> pages;
  {
    Submit submit = inquiry(lun, SCSI_INQUIRY_PAGECODE_SUPPORTED_VPD_PAGES);
    auto use = [&pages](void* d) {
      auto* sp = static_cast<scsi_inquiry_supported_pages*>(d);
      for (int i = 0; i < sp->num_pages; ++i) pages.push_back(sp->pages[i]);
    };
    (void)co_await ask(s, std::move(submit), "INQUIRY (VPD pages)", use);
  }
  const auto offered = [&pages](int page) { return std::find(pages.begin(), pages.end(), page) != pages.end(); };
  if (offered(SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS)) {
    Submit submit = inquiry(lun, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS);
    auto use = [&f](void* d) {
      auto* bl = static_cast<scsi_inquiry_block_limits*>(d);
      f.max_xfer_blocks = bl->max_xfer_len;
      f.max_unmap_blocks = bl->max_unmap;
      f.max_ws_blocks = bl->max_ws_len;
    };
    (void)co_await ask(s, std::move(submit), "INQUIRY (block limits)", use);
  }
  if (offered(SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING)) {
    Submit submit = inquiry(lun, SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING);
    auto use = [&f](void* d) {
      auto* lbp = static_cast<scsi_inquiry_logical_block_provisioning*>(d);
      f.lbpu = lbp->lbpu;
      f.lbpws = lbp->lbpws;
    };
    (void)co_await ask(s, std::move(submit), "INQUIRY (provisioning)", use);
  }

  // Write protection and DPOFUA from MODE SENSE(6)'s device-specific parameter.
  {
    Submit submit = [=](iscsi_context* c, iscsi_command_cb cb, void* p) {
      return iscsi_modesense6_task(c, lun, 1, SCSI_MODESENSE_PC_CURRENT, SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255, cb, p);
    };
    auto use = [&f](void* d) {
      auto* ms = static_cast<scsi_mode_sense*>(d);
      f.write_protected = ms->device_specific_parameter & 0x80;
      f.dpofua = ms->device_specific_parameter & 0x10;
    };
    (void)co_await ask(s, std::move(submit), "MODE SENSE(6)", use);
  }
  if (f.write_protected && !read_only)
    throw Error(EACCES, s.name() + ": Cannot open a write protected LUN as read-write");
  co_return f;
}

Task<std::unique_ptr<Node>> open_iscsi(const OpenContext& ctx, spec::Options& o) {
  IscsiConfig config = config_from_options(o);
  auto session = std::make_shared<Session>(ctx.executor, std::move(config));
  co_await session->connect();
  LunFacts facts;
  std::exception_ptr failure;
  try {
    facts = co_await probe_lun(*session, ctx.read_only);
  } catch (...) {
    failure = std::current_exception();
  }
  if (failure) {
    session->close();
    std::rethrow_exception(failure);
  }
  NETBLK_LOG(debug, "{}: type {}, {} blocks of {}, lbpme {} lbpu {} lbpws {} wp {} dpofua {}", session->name(),
             facts.device_type, facts.blocks, facts.block_size, facts.lbpme, facts.lbpu, facts.lbpws,
             facts.write_protected, facts.dpofua);
  auto node = std::make_unique<IscsiNode>(ctx, session, facts);
  co_return node;
}

const DriverRegistration kIscsi{ProtocolDriver{
    .name = "iscsi",
    .prefixes = {"iscsi", "iser"},
    .parse_filename = parse_filename,
    .open = open_iscsi,
    .create = {},
    .library_version = [] { return std::string("libiscsi " NETBLK_LIBISCSI_VERSION); },  // no runtime call
}};

}  // namespace
}  // namespace netblk::iscsi
