#Requires -Version 5.1
<#
.SYNOPSIS
  Removes the restic-manager agent that install.ps1 installed.

.DESCRIPTION
  Run in an elevated Windows PowerShell. Stops and deletes the service
  "restic-manager-agent" and removes "Program Files\restic-manager-agent".
  The config and state in "ProgramData\restic-manager-agent" (outbox, encrypted
  credentials, restic cache, logs) are kept unless -Purge is given, so a
  re-install can pick up where this one stopped. Repositories and snapshots are
  never touched. The machine stays listed in the app: delete it there to revoke
  its credentials for good.

.NOTES
  Exit status: 0 removed (or nothing was installed), 1 failure.
#>
[CmdletBinding()]
param([switch]$Purge)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$Name = 'restic-manager-agent'
$InstallDir = Join-Path $env:ProgramFiles $Name
$DataDir = Join-Path $env:ProgramData $Name

function Say([string]$Message) { Write-Host "restic-manager uninstall: $Message" }
function Stop-Uninstall([string]$Message) {
    Write-Host "restic-manager uninstall: error: $Message" -ForegroundColor Red
    exit 1
}

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Stop-Uninstall 'run this in an elevated PowerShell (Run as administrator)'
}

$removed = $false
$service = Get-Service -Name $Name -ErrorAction SilentlyContinue
if ($service) {
    if ($service.Status -ne 'Stopped') {
        Stop-Service -Name $Name -Force
        try {
            $service.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(90))
        } catch {
            Stop-Uninstall "the service $Name did not stop within 90 s; see Event Viewer, then run this again"
        }
    }
    & sc.exe delete $Name | Out-Null
    if ($LASTEXITCODE -ne 0) { Stop-Uninstall "sc.exe delete $Name failed (exit $LASTEXITCODE)" }
    Say "stopped and deleted the service $Name"
    $removed = $true
}

if (Test-Path -LiteralPath $InstallDir) {
    # This script may live in that folder: PowerShell has read it already.
    Remove-Item -LiteralPath $InstallDir -Recurse -Force
    Say "removed $InstallDir"
    $removed = $true
}

if (Test-Path -LiteralPath $DataDir) {
    if ($Purge) {
        Remove-Item -LiteralPath $DataDir -Recurse -Force
        Say "purged $DataDir"
        $removed = $true
    } else {
        Say "kept $DataDir (remove it with -Purge)"
    }
}

if ($removed) {
    Say 'done. The machine is still listed in restic-manager: delete it there to revoke its access.'
} else {
    Say 'the agent was not installed here: nothing to remove'
}
exit 0
