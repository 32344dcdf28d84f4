#!/usr/bin/env bash
# Builds the .deb: a Release build in build-package/ (prefix /usr, no tests), then CPack.
# The package's version is the project's (CMakeLists.txt); its Depends are computed by
# dpkg-shlibdeps from what bin/netblk links. Prints the .deb's path.
#   scripts/package.sh && dpkg -i build-package/package/netblk_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B build-package -G Ninja -DCMAKE_BUILD_TYPE=Release -DNETBLK_WERROR=ON -DNETBLK_TESTS=OFF \
  -DCMAKE_INSTALL_PREFIX=/usr "${launcher[@]}" >/dev/null
ninja -C build-package -j"$(nproc)"
rm -f build-package/package/netblk_*.deb
(cd build-package && cpack --config CPackConfig.cmake >/dev/null)
deb=$(ls build-package/package/netblk_*.deb)
dpkg-deb --field "$deb" Package Version Depends
echo "$deb"
