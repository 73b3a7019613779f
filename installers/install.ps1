#Requires -Version 5.1
<#
.SYNOPSIS
  Installs the restic-manager agent as a Windows service and enrols this machine.

.DESCRIPTION
  Run in an elevated Windows PowerShell (Run as administrator). The app prints
  a one-line command that fetches this script over TLS pinned to its
  certificate and runs it with -Server, -Token and -CertSha256. The script:
    1. checks the server's certificate against -CertSha256 before writing anything;
    2. downloads the agent over that pinned connection and checks its SHA-256;
    3. installs it to "Program Files\restic-manager-agent", enrols this machine
       (config and state in "ProgramData\restic-manager-agent", readable only by
       SYSTEM and Administrators);
    4. registers and starts the service "restic-manager-agent" (automatic start,
       restarted by the Service Control Manager if it stops unexpectedly);
    5. lists scheduled tasks that look like restic jobs (it never changes them)
       with the commands to disable them.
  Re-running it on an enrolled machine changes nothing unless -ForceReenrol (or
  RM_FORCE_REENROLL=1). With -Offline DIR (an unpacked offline bundle) nothing is
  downloaded; server, token and pin come from DIR\bundle.json.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File .\install.ps1 -Server https://app:8765 -Token rme_... -CertSha256 0123...

.NOTES
  Exit status: 0 done (or nothing to do), 1 failure, 2 usage error.
#>
[CmdletBinding()]
param(
    [string]$Server = $env:RM_SERVER,
    [string]$Token = $env:RM_TOKEN,
    [string]$CertSha256 = $env:RM_CERT_SHA256,
    [string]$Hostname = '',
    [string]$Restic = '',
    [string]$Offline = '',
    [switch]$ForceReenrol,
    [switch]$NoService
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$Name = 'restic-manager-agent'
$InstallDir = Join-Path $env:ProgramFiles $Name
$Exe = Join-Path $InstallDir "$Name.exe"
$DataDir = Join-Path $env:ProgramData $Name
$Config = Join-Path $DataDir 'config.toml'
$script:Created = @()
$script:Rollback = $false
$script:Work = $null
$script:SeenHash = ''

function Say([string]$Message) { Write-Host "restic-manager install: $Message" }
function Warn([string]$Message) { Write-Warning "restic-manager install: $Message" }

function Stop-Install([string]$Message, [int]$Code = 1) {
    Write-Host "restic-manager install: error: $Message" -ForegroundColor Red
    if ($script:Rollback) { Undo-Install }
    if ($script:Work -and (Test-Path -LiteralPath $script:Work)) {
        Remove-Item -LiteralPath $script:Work -Recurse -Force -ErrorAction SilentlyContinue
    }
    exit $Code
}

function Undo-Install {
    Say 'undoing what this run installed'
    foreach ($path in $script:Created) {
        Remove-Item -LiteralPath $path -Recurse -Force -ErrorAction SilentlyContinue
    }
}

# -- checks ---------------------------------------------------------------------------

function Test-Administrator {
    $principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Read-Bundle {
    if (-not $Offline) { return }
    if (-not (Test-Path -LiteralPath $Offline -PathType Container)) {
        Stop-Install "-Offline $Offline is not a folder: unpack the offline bundle and point -Offline at it" 2
    }
    $file = Join-Path $Offline 'bundle.json'
    if (-not (Test-Path -LiteralPath $file)) {
        Stop-Install "$file is missing: the offline bundle is incomplete; export it again from the app" 2
    }
    $bundle = Get-Content -LiteralPath $file -Raw -Encoding UTF8 | ConvertFrom-Json
    if (-not $script:Server) { $script:Server = [string]$bundle.server_url }
    if (-not $script:Token) { $script:Token = [string]$bundle.token }
    if (-not $script:CertSha256) { $script:CertSha256 = [string]$bundle.cert_sha256 }
}

function Test-Arguments {
    if (-not $script:Server) { Stop-Install '-Server is missing: copy the install command shown in the app (Add host)' 2 }
    if (-not $script:Token) { Stop-Install '-Token is missing: copy the install command shown in the app (Add host)' 2 }
    if (-not $script:CertSha256) { Stop-Install '-CertSha256 is missing: copy the install command shown in the app (Add host)' 2 }
    $script:Server = $script:Server.TrimEnd('/')
    if ($script:Server -notmatch '^https://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$') {
        Stop-Install "-Server must be just https://HOST:PORT (got '$($script:Server)'); copy it from the app" 2
    }
    $script:Pin = ($script:CertSha256 -replace ':', '').ToLowerInvariant()
    if ($script:Pin -notmatch '^[0-9a-f]{64}$') {
        Stop-Install "-CertSha256 must be 64 hexadecimal digits (got '$($script:CertSha256)')" 2
    }
    if ($script:Token -notmatch '^[A-Za-z0-9._~+/=-]+$') {
        Stop-Install '-Token contains characters no enrolment token has: copy it again from the app' 2
    }
}

function Get-Arch {
    # A 32-bit PowerShell on 64-bit Windows reports x86 here and the truth in ...W6432.
    $arch = $env:PROCESSOR_ARCHITEW6432
    if (-not $arch) { $arch = $env:PROCESSOR_ARCHITECTURE }
    switch ($arch) {
        'AMD64' { return 'amd64' }
        'ARM64' { return 'arm64' }
        'x86' { return '386' }
        default { Stop-Install "unsupported CPU architecture '$arch'" }
    }
}

function Test-Enrolled {
    if (-not (Test-Path -LiteralPath $Config)) { return $false }
    $id = (Select-String -LiteralPath $Config -Pattern '^host_id = (\d+)' | Select-Object -First 1)
    $hostId = if ($id) { $id.Matches[0].Groups[1].Value } else { '?' }
    if ($ForceReenrol -or $env:RM_FORCE_REENROLL -eq '1') {
        Say "this machine is enrolled (host id $hostId); -ForceReenrol: enrolling it again"
        return $false
    }
    Say "this machine is already enrolled (host id $hostId, config $Config): nothing was changed"
    Say 'to enrol it again with this token, add -ForceReenrol to the command (or set RM_FORCE_REENROLL=1)'
    Say "to remove the agent: powershell -ExecutionPolicy Bypass -File `"$InstallDir\uninstall.ps1`" [-Purge]"
    return $true
}

# -- the pinned connection --------------------------------------------------------------

function Get-CertificateHash($Certificate) {
    $sha = [Security.Cryptography.SHA256]::Create()
    try {
        return ([BitConverter]::ToString($sha.ComputeHash($Certificate.GetRawCertData())) -replace '-', '').ToLowerInvariant()
    } finally { $sha.Dispose() }
}

# GET $Server$Path into $OutFile, trusting exactly the pinned certificate (this
# request's own callback: nothing else in the session is affected).
# With -Optional a failure returns $false instead of ending the install.
function Get-Pinned([string]$Path, [string]$OutFile, [switch]$Optional) {
    [Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
    $request = [Net.HttpWebRequest]::Create("$($script:Server)$Path")
    $request.Timeout = 300000
    $request.ServerCertificateValidationCallback = {
        param($requestSender, $certificate, $chain, $policyErrors)
        $script:SeenHash = Get-CertificateHash $certificate
        return $script:SeenHash -eq $script:Pin
    }
    try {
        $response = $request.GetResponse()
    } catch [Net.WebException] {
        $failure = $_.Exception
        if ($Optional) { return $false }
        if ($script:SeenHash -and $script:SeenHash -ne $script:Pin) {
            Stop-Install "the server's certificate does not match -CertSha256 (expected $($script:Pin), the server presented $($script:SeenHash)). Check the fingerprint in the app (Settings, certificate) and that -Server points at restic-manager. Nothing was changed."
        }
        if ($failure.Response) {
            $status = [int]$failure.Response.StatusCode
            $reader = New-Object IO.StreamReader($failure.Response.GetResponseStream())
            $body = $reader.ReadToEnd()
            Stop-Install "downloading $Path from $($script:Server) failed: HTTP $status $body. Nothing was changed."
        }
        Stop-Install "cannot reach $($script:Server): $($failure.Message). Check that restic-manager is running and reachable from this machine. Nothing was changed."
    }
    try {
        $stream = $response.GetResponseStream()
        $file = [IO.File]::Create($OutFile)
        try { $stream.CopyTo($file) } finally { $file.Dispose(); $stream.Dispose() }
    } finally { $response.Dispose() }
    return $true
}

function Get-Agent([string]$Arch) {
    $agent = Join-Path $script:Work "$Name.exe"
    if ($Offline) {
        $source = Join-Path $Offline "$Name.exe"
        if (-not (Test-Path -LiteralPath $source)) {
            Stop-Install "the bundle has no $Name.exe: export a Windows bundle again from the app"
        }
        Test-BundleFile "$Name.exe"
        Copy-Item -LiteralPath $source -Destination $agent
        $resticSource = Join-Path $Offline 'restic.exe'
        if (Test-Path -LiteralPath $resticSource) {
            Test-BundleFile 'restic.exe'
            Copy-Item -LiteralPath $resticSource -Destination (Join-Path $script:Work 'restic.exe')
        }
        $uninstall = Join-Path $Offline 'uninstall.ps1'
        if (Test-Path -LiteralPath $uninstall) { Copy-Item -LiteralPath $uninstall -Destination $script:Work }
        Say "using the agent from the offline bundle (windows/$Arch)"
        return $agent
    }
    $sums = Join-Path $script:Work 'agent.sha256'
    Get-Pinned "/agent/binary.sha256?os=windows&arch=$Arch" $sums | Out-Null
    Say "the server's certificate matches the pin ($($script:Pin))"
    Get-Pinned "/agent/binary?os=windows&arch=$Arch" $agent | Out-Null
    $expected = ((Get-Content -LiteralPath $sums -Raw).Trim() -split '\s+')[0].ToLowerInvariant()
    $got = (Get-FileHash -LiteralPath $agent -Algorithm SHA256).Hash.ToLowerInvariant()
    if ($got -ne $expected) {
        Stop-Install "the downloaded agent's SHA-256 is $got, but the server announced $($expected): the download was damaged. Run the command again. Nothing was changed."
    }
    if (-not (Get-Pinned '/install/uninstall.ps1' (Join-Path $script:Work 'uninstall.ps1') -Optional)) {
        Warn 'this app does not serve uninstall.ps1: to remove the agent later, copy it from the app''s installers folder'
    }
    Say "downloaded the agent for windows/$Arch (sha256 $got)"
    return $agent
}

function Test-BundleFile([string]$File) {
    $sums = Join-Path $Offline 'SHA256SUMS'
    $line = Select-String -LiteralPath $sums -Pattern "^([0-9a-f]{64})  $([regex]::Escape($File))$" | Select-Object -First 1
    if (-not $line) { Stop-Install "$sums lists no checksum for $($File): export the bundle again from the app" }
    $expected = $line.Matches[0].Groups[1].Value
    $got = (Get-FileHash -LiteralPath (Join-Path $Offline $File) -Algorithm SHA256).Hash.ToLowerInvariant()
    if ($got -ne $expected) { Stop-Install "$File in the bundle is damaged (sha256 $got, expected $expected): copy the bundle again" }
}

# -- installing ---------------------------------------------------------------------------

# A folder only SYSTEM and Administrators can open: it holds the agent's key.
function New-PrivateFolder([string]$Path) {
    if (-not (Test-Path -LiteralPath $Path)) {
        New-Item -ItemType Directory -Path $Path | Out-Null
        $script:Created += $Path
    }
    $acl = New-Object Security.AccessControl.DirectorySecurity
    $acl.SetAccessRuleProtection($true, $false)
    $inherit = [Security.AccessControl.InheritanceFlags]'ContainerInherit, ObjectInherit'
    foreach ($sid in 'S-1-5-18', 'S-1-5-32-544') {
        $who = New-Object Security.Principal.SecurityIdentifier($sid)
        $rule = New-Object Security.AccessControl.FileSystemAccessRule($who, 'FullControl', $inherit, 'None', 'Allow')
        $acl.AddAccessRule($rule)
    }
    Set-Acl -LiteralPath $Path -AclObject $acl
}

function Install-Files([string]$Agent) {
    New-PrivateFolder $DataDir
    if (-not (Test-Path -LiteralPath $InstallDir)) {
        New-Item -ItemType Directory -Path $InstallDir | Out-Null
        $script:Created += $InstallDir
    }
    Copy-Item -LiteralPath $Agent -Destination $Exe -Force
    $resticCopy = Join-Path $script:Work 'restic.exe'
    if (Test-Path -LiteralPath $resticCopy) {
        Copy-Item -LiteralPath $resticCopy -Destination (Join-Path $InstallDir 'restic.exe') -Force
        if (-not $Restic) { $script:Restic = Join-Path $InstallDir 'restic.exe' }
    }
    $uninstall = Join-Path $script:Work 'uninstall.ps1'
    if (Test-Path -LiteralPath $uninstall) { Copy-Item -LiteralPath $uninstall -Destination $InstallDir -Force }
}

function Invoke-Enrol {
    # The token goes in the environment: a command line is readable by every user.
    $env:RM_ENROL_TOKEN = $script:Token
    $arguments = @('enrol', '--server', $script:Server, '--cert-sha256', $script:Pin,
        '--config', $Config, '--state-dir', $DataDir)
    if ($script:Restic) { $arguments += @('--restic', $script:Restic) }
    if ($Hostname) { $arguments += @('--hostname', $Hostname) }
    & $Exe @arguments
    Remove-Item Env:\RM_ENROL_TOKEN -ErrorAction SilentlyContinue
    if ($LASTEXITCODE -ne 0) {
        Stop-Install 'enrolment failed (the agent''s message is above); nothing of this run was kept. Fix the cause, create a new token in the app if this one was used or expired, and run the command again.'
    }
}

function Install-Service {
    $existing = Get-Service -Name $Name -ErrorAction SilentlyContinue
    $binaryPath = "`"$Exe`" service --config `"$Config`""
    if ($existing) {
        # Through CIM: sc.exe would need the quotes inside the path escaped, which
        # Windows PowerShell does not do for native commands.
        $change = Get-CimInstance -ClassName Win32_Service -Filter "Name='$Name'" |
            Invoke-CimMethod -MethodName Change -Arguments @{ PathName = $binaryPath; StartMode = 'Automatic' }
        if ($change.ReturnValue -ne 0) { Stop-Install "updating the service $Name failed (code $($change.ReturnValue))" }
    } else {
        New-Service -Name $Name -BinaryPathName $binaryPath -DisplayName 'restic-manager agent' `
            -Description 'Runs restic backups on this machine for the restic-manager desktop app.' `
            -StartupType Automatic | Out-Null
    }
    # Restart after 5 s, 5 s, then 60 s; also when the agent exits by itself with an
    # error (failureflag 1), which is how a self-update asks to be restarted.
    & sc.exe failure $Name reset= 86400 actions= restart/5000/restart/5000/restart/60000 | Out-Null
    & sc.exe failureflag $Name 1 | Out-Null
    Restart-Service -Name $Name -Force -ErrorAction SilentlyContinue
    if ((Get-Service -Name $Name).Status -ne 'Running') { Start-Service -Name $Name }
    $deadline = (Get-Date).AddSeconds(20)
    while ((Get-Date) -lt $deadline) {
        if ((Get-Service -Name $Name).Status -eq 'Running') {
            Say "the service $Name is running (log: $DataDir\logs\agent.log)"
            return
        }
        Start-Sleep -Milliseconds 500
    }
    Stop-Install "the service $Name did not start; see Event Viewer (Windows Logs, Application) and $DataDir\logs\agent.log"
}

function Set-AsideOldEnrolment {
    if (-not (Test-Path -LiteralPath $Config)) { return }
    $service = Get-Service -Name $Name -ErrorAction SilentlyContinue
    if ($service -and $service.Status -ne 'Stopped') { Stop-Service -Name $Name -Force }
    $aside = Join-Path $DataDir ('previous-' + (Get-Date -Format 'yyyyMMddHHmmss'))
    New-Item -ItemType Directory -Path $aside | Out-Null
    foreach ($file in $Config, "$Config.key", (Join-Path $DataDir 'secrets.bin')) {
        if (Test-Path -LiteralPath $file) { Move-Item -LiteralPath $file -Destination $aside }
    }
    Say "the previous enrolment was moved to $aside"
}

# -- restic jobs that already exist ------------------------------------------------------

function Show-ExistingJobs {
    $tasks = @(Get-ScheduledTask -ErrorAction SilentlyContinue | Where-Object {
            $task = $_
            ($task.TaskName -match 'restic' -and $task.TaskName -notmatch 'restic-manager') -or
            @($task.Actions | Where-Object {
                    ($_.PSObject.Properties.Name -contains 'Execute') -and
                    ("$($_.Execute) $($_.Arguments)" -match 'restic') -and
                    ("$($_.Execute)" -notmatch 'restic-manager')
                }).Count -gt 0
        })
    if ($tasks.Count -eq 0) {
        Say 'no other restic scheduled tasks found'
        return
    }
    Say 'restic already runs on a schedule here. These tasks were left alone; disable them once the app backs this machine up, or both run:'
    foreach ($task in $tasks) {
        Write-Host "  $($task.TaskPath)$($task.TaskName)  ($($task.State))"
        Write-Host "    disable: Disable-ScheduledTask -TaskPath '$($task.TaskPath)' -TaskName '$($task.TaskName)'"
    }
}

# -- main ----------------------------------------------------------------------------------

Read-Bundle
Test-Arguments
if (-not (Test-Administrator)) {
    Stop-Install 'run this in an elevated PowerShell (Run as administrator): the agent is installed as a service'
}
$arch = Get-Arch
if (Test-Enrolled) {
    Show-ExistingJobs
    exit 0
}
$script:Work = Join-Path ([IO.Path]::GetTempPath()) ("restic-manager-install-" + [Guid]::NewGuid().ToString('N'))
New-Item -ItemType Directory -Path $script:Work | Out-Null
try {
    $agent = Get-Agent $arch
    $version = & $agent --version
    if ($LASTEXITCODE -ne 0) { Stop-Install "the agent binary does not run on this machine: $version" }
    Say "agent: $version"
    $script:Rollback = $true
    if ($ForceReenrol -or $env:RM_FORCE_REENROLL -eq '1') { Set-AsideOldEnrolment }
    Install-Files $agent
    Invoke-Enrol
    # The token is spent: whatever fails next, this enrolment is kept.
    $script:Rollback = $false
    if ($NoService) {
        Say '-NoService: the agent is installed and enrolled, and nothing was started. Run it in this console with:'
        Write-Host "    & `"$Exe`" run --config `"$Config`""
    } else {
        Install-Service
    }
    Show-ExistingJobs
    Say "installed: agent $Exe, config $Config"
    Say 'done: the machine should show as online in the app within a few seconds'
} finally {
    if ($script:Work -and (Test-Path -LiteralPath $script:Work)) {
        Remove-Item -LiteralPath $script:Work -Recurse -Force -ErrorAction SilentlyContinue
    }
}
exit 0
